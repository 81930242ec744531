"""A GStreamer receiver for the glass-to-glass benchmark (bench/link.py), run by the system
Python (PyGObject): rtspsrc (latency 0) -> depayloader, or srtsrc -> tsdemux, then avdec ->
appsink, one line per decoded frame on standard output: `<pts ns> <CLOCK_MONOTONIC seconds
when decoded>`. Over RTSP the pts are the RTP timestamps (buffer-mode none): the jitter
buffer's default re-times buffers from their arrival, and at 30 fps that moves some by more
than half a frame, so link.py would take them for other frames.

    /usr/bin/python3 edge_semvc/bench/gst_receiver.py rtsp://127.0.0.1:PORT/PATH tcp|udp
    /usr/bin/python3 edge_semvc/bench/gst_receiver.py 'srt://127.0.0.1:PORT?mode=listener'

Imports nothing of the package. Runs until the stream ends, fails or it is killed.
"""
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

Gst.init(None)
uri = sys.argv[1]
if uri.startswith("srt://"):  # MPEG-TS: the pts are the stream's, from tsdemux
    source = f'srtsrc uri="{uri}" ! tsdemux'
else:
    source = (f"rtspsrc location={uri} protocols={sys.argv[2]} latency=0 buffer-mode=none ! "
              "rtph264depay")
pipeline = Gst.parse_launch(
    f"{source} ! h264parse ! avdec_h264 max-threads=1 ! appsink name=sink emit-signals=true "
    "sync=false max-buffers=1 drop=false")
loop = GLib.MainLoop()


def on_sample(sink):
    sample = sink.emit("pull-sample")
    now = time.monotonic()  # CLOCK_MONOTONIC: the sender's perf_counter reads the same clock
    print(sample.get_buffer().pts, f"{now:.6f}", flush=True)
    return Gst.FlowReturn.OK


def on_message(bus, msg):
    if msg.type in (Gst.MessageType.ERROR, Gst.MessageType.EOS):
        loop.quit()


pipeline.get_by_name("sink").connect("new-sample", on_sample)
bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message", on_message)
pipeline.set_state(Gst.State.PLAYING)
loop.run()
pipeline.set_state(Gst.State.NULL)
