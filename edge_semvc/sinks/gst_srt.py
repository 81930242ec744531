"""The SRT sender of the GStreamer child (`gst_child.py`, which imports this module when it
runs one): the parent's MPEG-TS over srtsink, as a caller that reconnects or a listener for any
number of callers, fed the child's packets through its `Feed`. Like the child, it runs under
the system Python and imports nothing of edge_semvc (`gst_child` is found beside it: the child
runs by path, its folder first on sys.path)."""
import os
import re
import time

from gst_child import address_of, emit

BACKOFF_S = (0.5, 1, 2, 4, 8)  # between SRT connection attempts (caller)
EOS_WAIT_S = 2  # at the end: for the SRT pipeline to send what it holds
LINK_REPORT_MS = 1000  # how often the link's state goes to the parent (`link` events)
LINK_COUNTS = (("packets-sent", "gint64"), ("packets-retransmitted", "int"),
               ("packets-sent-dropped", "int"), ("packet-ack-received", "int"))
NO_PEER_S = 3  # a caller not connected this long after it started says so (SRT's own timeout)


class SrtSender:
    """appsrc ! srtsink: the parent's MPEG-TS (muxed there with the input's audio and data
    streams, as for udp://), each access unit's or track packet's TS packets as one buffer,
    which srtsink sends in payloads of 7 TS packets. A caller reconnects with back-off when its
    peer goes (srtsink's own reconnect covers a short break; a failed attempt ends the
    pipeline, which is then rebuilt); a listener counts its callers."""

    def __init__(self, Gst, GLib, config, feed):
        self.Gst, self.GLib, self.config, self.feed = Gst, GLib, config, feed
        self.listener = config["mode"] == "listener"
        self.pipeline = self.src = None
        self.connected = False
        self.attempt = 0
        self.callers = 0
        self.started = None  # a caller's start, until it connected or said it could not
        self.peer_counts = {}  # each peer's LINK_COUNTS at the last link report (peer_stats)
        self.stream_ids = {}  # a listener's callers' stream ids, by address (caller-connecting)
        self.link_totals = [0, 0, 0]  # what the link reports say: sent, resent, dropped

    def uri(self):
        c = self.config
        host = c.get("address", c["host"]) if not self.listener or c["host"] != "0.0.0.0" \
            else ""
        host = "[%s]" % host if ":" in host else host  # an IPv6 address
        return "srt://%s:%d?mode=%s" % (host, c["port"], c["mode"])

    def start(self):
        Gst = self.Gst
        # async=false: a live source; srtsink must not wait for a preroll
        desc = ("appsrc name=src is-live=true format=time max-bytes=0 "
                "caps=video/mpegts,systemstream=true,packetsize=188 ! srtsink name=sink "
                "uri=\"%s\" latency=%d sync=false async=false wait-for-connection=false"
                % (self.uri(), self.config["latency"]))
        self.pipeline = Gst.parse_launch(desc)
        sink = self.pipeline.get_by_name("sink")
        if self.config.get("passphrase_env"):  # from the environment: never in an argument
            sink.set_property("passphrase", os.environ[self.config["passphrase_env"]])
        if self.config.get("streamid"):  # after the URI, which would reset it
            sink.set_property("streamid", self.config["streamid"])
        if self.listener:
            if sink.find_property("authentication") is not None:  # GStreamer 1.22
                sink.set_property("authentication", True)  # else caller-connecting is not sent
                sink.connect("caller-connecting", self.on_connecting)
            sink.connect("caller-added", self.on_caller, "client_joined")
            sink.connect("caller-removed", self.on_caller, "client_left")
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            error = self.pop_error() or "cannot start %s" % self.uri()
            self.stop()
            return error
        self.src = self.pipeline.get_by_name("src")
        self.feed.attach(self.src, receivers=self.callers if self.listener else 0)
        if not self.listener:
            self.started = time.monotonic()
            self.GLib.timeout_add(200, self.poll_connection, self.pipeline)
        self.GLib.timeout_add(LINK_REPORT_MS, self.report_link, self.pipeline)
        return None

    def pop_error(self):
        msg = self.pipeline.get_bus().pop_filtered(self.Gst.MessageType.ERROR)
        return msg.parse_error()[0].message if msg else None

    def stop(self, drain=False):
        """Ends the pipeline; `drain`: what it holds goes out first (at most about
        2 x EOS_WAIT_S): through the pipeline, then out of SRT's send buffer, which closing
        the socket would discard (SRT paces a burst out over time), then for the receivers
        to play it out: a receiver holds each packet for the latency, and drops what it holds
        when the sender closes (the last 0.2-0.6 s of every stream, before)."""
        if self.pipeline is not None:
            self.feed.detach(self.src)
            bus = self.pipeline.get_bus()
            bus.remove_signal_watch()
            if drain and self.src.emit("end-of-stream") == self.Gst.FlowReturn.OK:
                bus.timed_pop_filtered(int(EOS_WAIT_S * self.Gst.SECOND),
                                       self.Gst.MessageType.EOS | self.Gst.MessageType.ERROR)
                # sent: when the count stood still for 0.3 s (SRT paces; a busy CPU pauses it)
                sent, still, deadline = -1, 0, time.monotonic() + EOS_WAIT_S
                while time.monotonic() < deadline and still < 3:
                    still = still + 1 if sent == (sent := self.bytes_sent()) else 0
                    time.sleep(0.1)
                time.sleep(self.delivery_s())
            self.pipeline.set_state(self.Gst.State.NULL)
            self.pipeline = None

    def delivery_s(self):
        """How long the last packet sent takes to be played out by the slowest receiver: its
        latency and a round trip (a resend), at most EOS_WAIT_S."""
        text = stats_text(self.pipeline)
        latency = max((float(v) for v in stat(text, "negotiated-latency-ms", "int")),
                      default=self.config["latency"])
        rtt = max((float(v) for v in stat(text, "rtt-ms", "double")), default=0.0)
        return min(EOS_WAIT_S, (latency + 2 * rtt + 250) / 1000)  # 250: a receiver's own lag

    def bytes_sent(self):
        """What SRT sent so far, to every peer."""
        return sum(int(n) for n in stat(stats_text(self.pipeline), "bytes-sent", "guint64"))

    def report_link(self, pipeline):
        """The link's state for the parent's rate follower, every LINK_REPORT_MS: packets
        sent, resent and dropped as too late, added up over the peers since the sender started
        (running totals: a listener's caller that goes takes its counts out of srtsink's, these
        stay), and the worst round trip, of the peers heard since the last report; `silent`:
        the peers sent to that acknowledged nothing (one viewer of several frozen or cut off:
        left out, its packets given up say nothing of the others' link). A listener's callers
        are told apart by their address: one that joins or goes leaves the others counted (a
        new one from 0); where srtsink gives no address, a report in which the peers changed
        is left out."""
        if pipeline is not self.pipeline:
            return False
        now = {(peer if peer is not None else i): (n, rtt)
               for i, (peer, n, rtt) in enumerate(peer_stats(pipeline))}
        before, self.peer_counts = self.peer_counts, {k: n for k, (n, _) in now.items()}
        silent, heard = 0, [rtt for _, rtt in now.values()]
        if all(isinstance(k, str) for k in (*before, *now)) or len(before) == len(now):
            heard = []  # the same peers, or peers told apart; else a report left out
            for key, (n, rtt) in now.items():
                b = before.get(key, (0, 0, 0, 0))  # a caller that just joined: from 0
                if n[0] < b[0]:  # another peer in its place (or a new pipeline's)
                    continue
                if n[0] > b[0] and n[3] == b[3]:
                    silent += 1
                    continue
                self.link_totals = [t + x - y for t, x, y in zip(self.link_totals, n[:3], b)]
                heard.append(rtt)
        emit("link", peers=len(now), rtt_ms=max(heard, default=0.0), silent=silent,
             **dict(zip(("sent", "resent", "dropped"), self.link_totals)))
        return True

    def on_connecting(self, sink, address, stream_id):
        """A caller's stream id, told with its joining."""
        self.stream_ids[address_of(address)] = stream_id or None
        return True  # taken (as without the signal)

    def on_caller(self, sink, socket_id, address, event):
        self.callers = max(0, self.callers + (1 if event == "client_joined" else -1))
        self.feed.set_receivers(self.src, self.callers)
        address = address_of(address)
        stream_id = self.stream_ids.pop(address, None)
        emit(event, address=address, transport="srt",
             **({"stream_id": stream_id} if stream_id and event == "client_joined" else {}))
        if event == "client_joined":  # it decodes from the next IDR (the parameter sets
            emit("idr")                # come with it), without a gap for the others

    def poll_connection(self, pipeline):
        """Caller: connected once srtsink's statistics describe a socket (every 200 ms)."""
        if pipeline is not self.pipeline:
            return False
        stats = pipeline.get_by_name("sink").get_property("stats")
        connected = stats is not None and stats.has_field("packets-sent")
        if connected and not self.connected:
            self.set_connected(True, None)
        elif not connected and not self.connected and self.started is not None and \
                time.monotonic() - self.started >= NO_PEER_S:
            self.started = None  # said once a start: the parent keeps it lost until back
            emit("peer_lost", reason="no SRT listener at %s:%d answered within %d s; still "
                 "calling" % (self.config["host"], self.config["port"], NO_PEER_S))
        return True

    def set_connected(self, connected, reason):
        self.connected = connected
        self.feed.set_receivers(self.src, int(connected))
        if connected:
            self.attempt, self.started = 0, None
            emit("peer_back")
            emit("idr")  # a new peer decodes from it (after a reconnect, it came mid-stream)
        else:
            emit("peer_lost", reason=reason)

    def on_message(self, bus, msg):
        Gst = self.Gst
        if msg.type == Gst.MessageType.WARNING and not self.listener:
            # srtsink reconnects by itself after a broken connection: the peer is gone meanwhile
            if self.connected:
                self.set_connected(False, "SRT peer gone: " + msg.parse_warning()[0].message)
        elif msg.type == Gst.MessageType.ERROR:
            reason = msg.parse_error()[0].message
            if self.listener:
                emit("error", message="%s: %s" % (self.uri(), reason))
                os._exit(1)
            if self.connected or self.attempt == 0:
                self.set_connected(False, reason if self.connected else "no SRT listener at "
                                   "%s:%d answered (%s)" % (self.config["host"],
                                                            self.config["port"], reason))
            self.stop()
            delay = BACKOFF_S[min(self.attempt, len(BACKOFF_S) - 1)]
            self.attempt += 1
            self.GLib.timeout_add(int(delay * 1000), self.retry)

    def retry(self):
        error = self.start()
        if error:  # cannot even build the pipeline: the parent restarts the child
            emit("error", message=error)
            os._exit(1)
        return False


def stats_text(pipeline):
    """srtsink's statistics as text, a listener's per-caller ones (nested, escaped) unescaped."""
    stats = pipeline.get_by_name("sink").get_property("stats")
    return stats.to_string().replace("\\", "") if stats is not None else ""


def peer_stats(pipeline):
    """Each peer's (identity, LINK_COUNTS, round trip in ms): a listener's callers by their
    address 'HOST:PORT' (srtsink lists the newest first), a caller's one peer as None (and a
    caller whose address srtsink does not give)."""
    stats = pipeline.get_by_name("sink").get_property("stats")
    if stats is None:
        return []
    callers = stats.get_value("callers") if stats.has_field("callers") else [stats]
    peers = []
    for s in callers or []:
        if not s.has_field("packets-sent"):  # a caller not connected yet
            continue
        address = s.get_value("caller-address") if s.has_field("caller-address") else None
        peers.append((address_of(address) if address is not None else None,
                      tuple(int(s.get_value(name)) for name, _ in LINK_COUNTS),
                      float(s.get_value("rtt-ms"))))
    return peers


def stat(text, name, kind):
    """One field of those statistics, per peer (a caller's own, or each of a listener's
    callers')."""
    return re.findall(r"\b%s=\(%s\)([-+.\deE]+)" % (name, kind), text)
