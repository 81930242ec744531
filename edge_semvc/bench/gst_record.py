"""A GStreamer SRT receiver that records what it gets, for the lossy-link benchmark
(bench/loss.py), run by the system Python (PyGObject): srtsrc (listener) -> filesink, the
MPEG-TS as it arrives, written unbuffered so that a kill loses nothing.

    /usr/bin/python3 edge_semvc/bench/gst_record.py 'srt://127.0.0.1:PORT?mode=listener' FILE

Imports nothing of the package. Runs until the caller goes (end of stream) or it is killed;
exits 1 on a GStreamer error (its message on standard error).
"""
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

Gst.init(None)
uri, path = sys.argv[1], sys.argv[2]
pipeline = Gst.parse_launch(f'srtsrc uri="{uri}" ! filesink location="{path}" '
                            "buffer-mode=unbuffered sync=false")
loop = GLib.MainLoop()
failed = []


def on_message(_bus, message):
    if message.type == Gst.MessageType.ERROR:
        err, _ = message.parse_error()
        print(err.message, file=sys.stderr, flush=True)
        failed.append(err.message)
        loop.quit()
    elif message.type == Gst.MessageType.EOS:
        loop.quit()


bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message", on_message)
GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
pipeline.set_state(Gst.State.PLAYING)
loop.run()
pipeline.set_state(Gst.State.NULL)
sys.exit(1 if failed else 0)
