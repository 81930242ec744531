"""The receiving side of an `srt://` input (`srt.py` starts and supervises it): GStreamer's
srtsrc, as a listener that waits for callers one after another (keep-listening) or a caller
that reconnects, its MPEG-TS written to a pipe the parent's PyAV reads (`fdsink`).

PyAV's bundled FFmpeg has no libsrt, Debian's GStreamer has (gstreamer1.0-plugins-bad), reached
through PyGObject, which only the system Python has: this file is run by path by that Python,
as the outputs' `sinks/gst_child.py` is, and imports nothing from edge_semvc:

    python3 srt_child.py CONFIG_JSON   receive until standard input ends (the parent gone)

CONFIG_JSON: uri (srtsrc's), latency (ms), passphrase_env (the variable holding the
passphrase, never the passphrase itself), streamid (a caller's stream id, or null), fd (the
pipe's end to write the MPEG-TS to), queue_bytes (what waits for the pipe at most; past it,
the oldest is dropped).
Standard output carries JSON lines, one event each: `ready`, `error` (message; then exit 1),
`warning` (message: a caller's connection failing, srtsrc retries), `caller_added` and
`caller_removed` (address: a listener's sender; `caller_added`'s stream_id: the one it sent,
where it sent one), `caller_refused` (address: a sender that called while another sent: srtsrc
would take its call and drop what it sends, and take no other once the first left).
"""
import json
import os
import sys
import threading


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def missing():
    """What the input needs and this Python lacks, naming the Debian package; None if none."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError):
        return "PyGObject and GStreamer's typelib for %s (Debian packages python3-gi, " \
               "gir1.2-gstreamer-1.0)" % sys.executable
    Gst.init(None)
    for element, package in (("srtsrc", "gstreamer1.0-plugins-bad"),
                             ("fdsink", "libgstreamer1.0-0")):
        if Gst.ElementFactory.find(element) is None:
            return "the GStreamer element %s (Debian package %s)" % (element, package)
    return None


def address_of(inet):
    return "%s:%d" % (inet.get_address().to_string(), inet.get_port())


def run(config):
    lacking = missing()
    if lacking:
        emit("error", message="it needs %s: it is missing" % lacking)
        return 1
    from gi.repository import Gio, GLib, Gst  # noqa: F401  (Gio: the callers' addresses)

    pipeline = Gst.parse_launch(
        "srtsrc name=src uri=\"%s\" latency=%d keep-listening=true ! queue max-size-buffers=0 "
        "max-size-time=0 max-size-bytes=%d leaky=downstream ! fdsink fd=%d sync=false"
        % (config["uri"], config["latency"], config["queue_bytes"], config["fd"]))
    src = pipeline.get_by_name("src")
    if config.get("passphrase_env"):  # from the environment: never in an argument
        src.set_property("passphrase", os.environ[config["passphrase_env"]])
    if config.get("streamid"):  # after the URI, which would reset it
        src.set_property("streamid", config["streamid"])
    stream_ids = {}  # a listener's callers' stream ids, by address (caller-connecting)
    sending = set()  # the address of the listener's caller now sending (one at a time)
    if src.find_property("authentication") is not None:  # GStreamer 1.22: callers' stream ids
        src.set_property("authentication", True)  # else caller-connecting is not emitted

        def connecting(_s, address, stream_id):
            if sending:  # refused: it may call again once the one sending left
                emit("caller_refused", address=address_of(address))
                return False
            stream_ids[address_of(address)] = stream_id or None
            return True

        src.connect("caller-connecting", connecting)

    def added(_s, _id, address):
        address = address_of(address)
        sending.add(address)
        emit("caller_added", address=address, stream_id=stream_ids.pop(address, None))

    src.connect("caller-added", added)

    def removed(_s, _id, address):
        address = address_of(address)
        sending.discard(address)
        emit("caller_removed", address=address)

    src.connect("caller-removed", removed)
    loop = GLib.MainLoop()
    status = [0]

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            emit("error", message=msg.parse_error()[0].message)
            status[0] = 1
            loop.quit()
        elif msg.type == Gst.MessageType.WARNING:
            emit("warning", message=msg.parse_warning()[0].message)
        elif msg.type == Gst.MessageType.EOS:  # srtsrc ended the stream: nothing more comes
            emit("error", message="the SRT source ended its stream")
            status[0] = 1
            loop.quit()

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        emit("error", message=msg.parse_error()[0].message if msg else "cannot start srtsrc")
        pipeline.set_state(Gst.State.NULL)
        return 1

    def wait_for_parent():  # its standard input ends when it closes the input, or dies
        while sys.stdin.buffer.read(4096):
            pass
        GLib.idle_add(loop.quit)

    threading.Thread(target=wait_for_parent, daemon=True).start()
    emit("ready")
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    return status[0]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: srt_child.py CONFIG_JSON\n")
        sys.exit(2)
    sys.exit(run(json.loads(sys.argv[1])))
