"""The built-in RTSP server of the GStreamer child (`gst_child.py`, which imports this module
when it runs one): a GstRtspServer whose clients' media take the child's packets through its
`Feed`. Like the child, it runs under the system Python and imports nothing of edge_semvc
(`gst_child` is found beside it: the child runs by path, its folder first on sys.path)."""
import os
import time

from gst_child import RTSP_AUDIO, address_of, appsrc_desc, emit

PAY = {"h264": "rtph264pay", "hevc": "rtph265pay"}
LINK_POLL_MS = 250  # how often the clients' sessions are read for a new receiver report
FIRST_INTERVAL_S = 5.0  # a client's report interval until two are seen (RFC 3550's least)
SENDER_REPORT_NS = 1_000_000_000  # our RTCP sender reports' least interval
OVERDUE = 3  # a client whose report is this many of its intervals late is silent
# a longer round trip is a report that answers no sender report of ours (forged or broken):
# not believed (one such would make every real round trip after it read as a queue)
MAX_RTT_MS = 30_000.0
IDLE_CHECK_MS = 1000  # how often connections are checked for playing
REFUSED_GRACE_MS = 1000  # a refused connection is closed after this
# the requests of a refused connection answered 503 (Service Unavailable); OPTIONS is answered
# (GstRtspServer 1.22 crashes on an error from its pre-options-request: a double free)
REQUESTS = ("describe", "setup", "play", "pause", "teardown", "announce", "record",
            "get-parameter", "set-parameter")


class RtspServer:
    """A GstRtspServer; each client gets its own media (appsrc ! parse ! pay, and appsrc ! pay
    for each carried audio track), fed with the same packets, so that each starts at an IDR of
    its own: joining a shared media starts a client mid-frame, and its first pictures are
    broken."""

    def __init__(self, Gst, config, feed):
        from gi.repository import GLib, GstRtsp, GstRtspServer

        self.Gst, self.GLib, self.GstRtsp, self.feed = Gst, GLib, GstRtsp, feed
        # RTSPClient -> {"address", "transport", "playing", "since" (not playing since), "link"}
        self.clients = {}
        # connections at once (more are refused), and how long one may stay without playing:
        # each that DESCRIBEs holds a prepared media (2 threads, 4 fds) until it closes
        self.max_clients, self.idle_s = config["max_clients"], config["idle_s"]
        self.link_totals = [0, 0]  # what the link reports say: packets sent, lost
        self.link_state = (0, 0)  # the peers and silent ones of the last `link` event
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(config["host"])
        self.server.set_service(str(config["port"]))
        factory = GstRtspServer.RTSPMediaFactory()
        self.tracks = len(config.get("tracks", []))
        factory.set_launch("( %s ! %s name=pay0 pt=96 %s)"
                           % (appsrc_desc(config["codec"]), PAY[config["codec"]],
                              "".join(track_desc(i + 1, t)
                                      for i, t in enumerate(config.get("tracks", [])))))
        factory.set_shared(False)
        factory.set_latency(0)
        # PAUSED from DESCRIBE to PLAY, where its running time stands still: the first
        # picture's time then follows the parameter sets prepared at 0 (not the seconds a
        # client that probes before it plays waited; the stamps follow the running time)
        factory.set_suspend_mode(GstRtspServer.RTSPSuspendMode.PAUSE)
        factory.connect("media-configure", self.on_media_configure)
        if config.get("user_env"):
            self.require_credentials(GstRtspServer, factory, config)
        self.server.get_mount_points().add_factory(config["path"], factory)
        self.server.connect("client-connected", self.on_client_connected)

    def require_credentials(self, GstRtspServer, factory, config):
        """Digest authentication (the password never crosses the network in clear) with the
        user and password read from the environment variables the config names."""
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(self.GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken.new()
        token.set_string("media.factory.role", "viewer")
        auth.add_digest(os.environ[config["user_env"]], os.environ[config["password_env"]],
                        token)
        self.server.set_auth(auth)
        factory.add_role_from_structure(self.Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))

    def start(self):
        from gi.repository import GLib

        if self.server.attach(None) == 0:
            return "cannot listen on %s:%s (address in use or not this machine's)" % (
                self.server.get_address(), self.server.get_service())
        GLib.timeout_add(LINK_POLL_MS, self.report_link)
        self.server.get_session_pool().connect("session-removed", self.on_session_removed)
        GLib.timeout_add(IDLE_CHECK_MS, self.close_idle)
        return None

    def close_idle(self):
        """Closes the connections that have not been playing for idle_s (since they came or
        their TEARDOWN): a scanner's, a client that never plays; and ends the sessions that
        timed out (GstRtspServer leaves that to the application): a viewer over UDP gone
        without a TEARDOWN (its network lost, the connection left half open) was sent the
        stream for ever."""
        self.server.get_session_pool().cleanup()
        now = time.monotonic()
        for client, info in list(self.clients.items()):
            if not info["playing"] and now - info["since"] > self.idle_s:
                client.close()
        return True

    def report_link(self):
        """The clients' RTCP receiver reports on the video stream, for the parent's rate
        follower, as the SRT sender's `link` events: one when a client's report is new (every
        1.5-5 s: FFmpeg's RTSP client sends one each 280 kB received, GStreamer's every 2.5-7.5
        s) or when a client falls silent or is heard again. `sent`: the packets the clients
        should have had (each report's highest sequence number over its last), `resent`: those
        lost (RTP sends nothing again: what SRT would have sent again), `dropped` 0, added up
        over the clients since the server started; `rtt_ms` the worst round trip of those
        heard (the report's LSR/DLSR). `peers`: the clients that ever reported (FFmpeg over
        TCP sends none: nothing is known of its link); `silent`: those whose report is OVERDUE
        intervals late while packets go to them (frozen or cut off; gone ones leave)."""
        now, new, peers, silent, rtts = time.monotonic(), False, 0, 0, []
        for info in self.clients.values():
            link = info.get("link")
            if link is None:
                continue
            new |= link.read(now, self.link_totals)
            if link.report is None:
                continue
            peers += 1
            if link.silent:
                silent += 1
            elif link.rtt_ms is not None:
                rtts.append(link.rtt_ms)
        # nothing is said before a round trip is known (a client answers our sender reports,
        # which a narrow link loses too): what it counted meanwhile waits in the totals
        if (new or (peers, silent) != self.link_state) and (rtts or silent == peers):
            self.link_state = (peers, silent)
            emit("link", peers=peers, rtt_ms=max(rtts, default=0.0), silent=silent,
                 sent=self.link_totals[0], resent=self.link_totals[1], dropped=0)
        return True

    def on_media_configure(self, factory, media):
        bin_ = media.get_element()
        src = bin_.get_by_name_recurse_up("src")
        tracks = [bin_.get_by_name_recurse_up("src%d" % (i + 1)) for i in range(self.tracks)]
        # prepared on the last key frame's parameter sets: one key frame, at PLAY
        self.feed.prepare(src, tracks=tracks)
        media.connect("unprepared", lambda m: self.feed.detach(src))

    def on_client_connected(self, server, client):
        conn = client.get_connection()
        address = address_of(conn.get_read_socket().get_remote_address())
        if len(self.clients) >= self.max_clients:
            self.refuse(client, address)
            return
        self.clients[client] = {"address": address, "transport": None, "playing": False,
                                "since": time.monotonic()}
        client.connect("setup-request", self.on_setup)
        client.connect("pre-play-request", self.on_pre_play)
        client.connect("play-request", self.on_play)
        client.connect("pause-request", self.on_pause)
        client.connect("teardown-request", self.on_teardown)
        client.connect("closed", self.on_closed)

    def refuse(self, client, address):
        """A connection beyond max_clients: its requests (but OPTIONS) are answered 503
        (Service Unavailable), and it is closed REFUSED_GRACE_MS after it came (not at its
        answer: the client's requests are answered on a thread of the server's, and a close
        from here could go before the answer)."""
        emit("client_refused", address=address, max_clients=self.max_clients)

        def unavailable(client, ctx):
            return self.GstRtsp.RTSPStatusCode.SERVICE_UNAVAILABLE

        def close():
            client.close()
            return False

        for request in REQUESTS:
            client.connect("pre-%s-request" % request, unavailable)
        self.GLib.timeout_add(REFUSED_GRACE_MS, close)

    def on_setup(self, client, ctx):
        # without a sign of life (a receiver report, a keep-alive request) for idle_s (and
        # GstRtspServer's 5 s more), its session ends
        ctx.session.set_timeout(max(1, round(self.idle_s)))
        self.clients[client]["session"] = ctx.session
        _, value = ctx.request.get_header(self.GstRtsp.RTSPHeaderField.TRANSPORT, 0)
        value = (value or "").lower()
        self.clients[client]["transport"] = (
            "tcp" if "/tcp" in value else "udp-multicast" if "multicast" in value else "udp")

    def on_pre_play(self, client, ctx):
        """Before the client's transports start: its media starts (or restarts) at the next
        IDR, asked for now (it was prepared on the last key frame's parameter sets)."""
        if ctx.media is not None:
            self.feed.resync(ctx.media.get_element().get_by_name_recurse_up("src"))
        return self.GstRtsp.RTSPStatusCode.OK

    def on_play(self, client, ctx):
        info = self.clients[client]
        stream = ctx.media.get_stream(0) if ctx.media is not None else None
        session = stream.get_rtpsession() if stream is not None else None
        paused = info.pop("paused", False)  # a PLAY after a PAUSE
        if session is not None and (info.get("link") is None or
                                    info["link"].session is not session):
            # our sender reports every 0.5-1.5 s, not 2.5-7.5 (RFC 3550's reduced minimum,
            # 360 s over the rate in kbit/s, allows 1 s from 360 kbit/s): a client's report
            # then tells the round trip of a recent one
            session.set_property("rtcp-min-interval", SENDER_REPORT_NS)
            info["link"] = ClientLink(session)
        elif session is not None and paused:
            # the packets made while it was paused never went to it (their sequence numbers
            # are skipped): its reports count again from one past this PLAY's
            ok, _, seq, _, _ = stream.get_rtpinfo()
            if ok:
                info["link"].replay(seq)
        if not info["playing"]:
            info["playing"] = True
            emit("client_joined", address=info["address"], transport=info["transport"])

    def on_pause(self, client, ctx):
        info = self.clients.get(client)
        if info is not None:
            info["paused"] = True

    def on_teardown(self, client, ctx):
        """A client that ends its session and keeps its connection (a VMS that plays again on
        it later) left: it was counted, and its link judged, until the connection closed."""
        info = self.clients.get(client)
        if info is not None:
            info["link"] = None
            self.left(info)

    def on_session_removed(self, pool, session):
        """A client's session ended (timed out, or its TEARDOWN): it has left."""
        for info in list(self.clients.values()):
            if info.get("session") is session:
                info["link"] = None
                self.left(info)

    def on_closed(self, client):
        info = self.clients.pop(client, None)
        if info:
            self.left(info)

    def left(self, info):
        info["since"] = time.monotonic()
        if info["playing"]:
            info["playing"] = False
            emit("client_left", address=info["address"], transport=info["transport"])


class ClientLink:
    """What one client's receiver reports say of its link, from its media's RTP session (the
    video stream's): `report` its last (None: none yet), `rtt_ms` its round trip (None until a
    report answers a sender report of ours), `silent`: its report is overdue, OVERDUE times
    the gap between its last two (at least FIRST_INTERVAL_S: FFmpeg's gap grows as the rate
    falls) while packets go to it."""

    def __init__(self, session):
        self.session = session
        self.report = self.rtt_ms = self.at = None
        # the remote source (SSRC) whose reports it follows, the first heard: another in the
        # session (a second SSRC of the client, or packets from elsewhere to the server's RTCP
        # port) is left out (taking the last, its counts read as a jump of the first's)
        self.source = None
        self.interval = FIRST_INTERVAL_S
        self.silent = False
        self.sent_at_report = 0  # our packets sent when its last report came
        self.start = None  # the sequence number of our first packet, as its reports count
        # after it was silent: the first packet sent after it was heard again (after a
        # PAUSE: the one its PLAY started at, `replay`); None: no such wait
        self.resume = None
        self.replayed = None  # the 16-bit sequence number a PLAY after a PAUSE started at

    def read(self, now, totals):
        """Reads the session; a new report adds its packets to `totals` (sent, lost) and
        says True. Counted from the report before (a client's first: from our first packet),
        but those after it was silent until one covers a packet sent after it was heard
        again: what it lost while frozen (its socket's buffer overflowed) says nothing of its
        link."""
        reports, sent, base = receiver_reports(self.session)
        if self.source not in reports and reports:  # the first heard (or the one followed
            # left: BYE): a new one's first report is where its counts start
            self.source, self.report = next(iter(reports)), None
        report = reports.get(self.source)
        if report is None or report == self.report:
            self.silent = self.report is not None and sent > self.sent_at_report and \
                now - self.at > OVERDUE * self.interval
            return False
        before, was_silent = self.report, self.silent
        if self.at is not None and not was_silent:  # not a frozen one's gap
            self.interval = max(FIRST_INTERVAL_S, now - self.at)
        self.report, self.at, self.sent_at_report, self.silent = report, now, sent, False
        ext, lost, lsr, _, rtt = report
        if lsr and rtt * 1000.0 / 65536 <= MAX_RTT_MS:
            self.rtt_ms = rtt * 1000.0 / 65536  # RTCP's unit: 1/65536 s
        if self.start is None and 0 <= base < 0x10000:  # its media is its own: it got
            start = (ext & ~0xFFFF) | base                 # our first packet
            self.start = start - 0x10000 if start > ext else start
            before = before or (self.start, 0)
        if was_silent:
            self.resume = (self.start or 0) + sent
        if self.replayed is not None:  # extended as the report's nearest
            resume = (ext & ~0xFFFF) | self.replayed
            resume += 0x10000 if ext - resume > 0x8000 else \
                -0x10000 if resume - ext > 0x8000 else 0
            self.resume, self.replayed = max(self.resume or 0, resume), None
        if self.resume is not None:  # the reports up to the first past it: from there on
            self.resume = self.resume if ext <= self.resume else None
            return False
        if before is None or ext < before[0]:
            return False
        # no more lost than it should have had: a report that says more is not believed
        totals[0] += ext - before[0]
        totals[1] += min(ext - before[0], max(0, lost - before[1]))
        return True


    def replay(self, seq):
        """A PLAY after a PAUSE, its first packet numbered `seq` (16 bits): the reports up to
        the first past it count nothing, for the sequence numbers the pause skipped (its media
        went on making packets, which were not sent) would read as lost."""
        self.replayed = seq


def receiver_reports(session):
    """The last receiver report on our stream of each remote source of an RTP session, by
    its SSRC: (its extended highest sequence number, cumulative packets lost, LSR, DLSR, round
    trip); and the packets we sent, and the sequence number of our first (-1: none yet).
    Only report blocks about our own sender's SSRC count (the session drops a source soon
    after its BYE)."""
    reports, sent, base, ours = {}, 0, -1, None
    stats = session.get_property("stats")  # held: the sources' structures are its
    for source in stats.get_value("source-stats"):
        if source.get_value("internal"):
            sent, base = source.get_value("packets-sent"), source.get_value("seqnum-base")
            ours = source.get_value("ssrc")
        elif source.get_value("have-rb"):
            reports[source.get_value("ssrc")] = (source.get_value("rb-ssrc"), tuple(
                source.get_value("rb-" + k) for k in (
                    "exthighestseq", "packetslost", "lsr", "dlsr", "round-trip")))
    return {ssrc: r for ssrc, (about, r) in reports.items() if about == ours}, sent, base


def track_desc(n, track):
    """Stream n's branch of the media: an appsrc with the track's caps, its payloader (pay<n>,
    dynamic payload type 96 + n)."""
    caps, pay = RTSP_AUDIO[track["codec"]]
    caps += ",rate=%d,channels=%d" % (track["rate"], track["channels"])
    if track["codec"] == "aac":  # raw, with its configuration (the parent turns ADTS raw)
        caps += ",stream-format=raw,codec_data=(buffer)%s" % track["extradata"]
    return ("appsrc name=src%d is-live=true format=time max-bytes=0 caps=\"%s\" ! %s name=pay%d "
            "pt=%d " % (n, caps, pay, n, 96 + n))
