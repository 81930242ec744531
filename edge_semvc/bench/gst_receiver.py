"""A GStreamer receiver for the glass-to-glass benchmark (bench/link.py), run by the system
Python (PyGObject): rtspsrc (latency 0) -> depayloader, or srtsrc -> tsdemux, then avdec ->
appsink, one line per decoded picture on standard output: `<frame number> <CLOCK_MONOTONIC
seconds when decoded>`, the number the one link.py burnt into the picture ("-" where none).

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
BITS, BLOCK = 16, 16  # bench/link.py's STAMP_BITS, STAMP_BLOCK
uri = sys.argv[1]
if uri.startswith("srt://"):  # MPEG-TS
    source = f'srtsrc uri="{uri}" ! tsdemux'
else:
    source = (f"rtspsrc location={uri} protocols={sys.argv[2]} latency=0 buffer-mode=none ! "
              "rtph264depay")
pipeline = Gst.parse_launch(
    f"{source} ! h264parse ! avdec_h264 max-threads=1 ! video/x-raw,format=I420 ! appsink "
    "name=sink emit-signals=true sync=false max-buffers=1 drop=false")
loop = GLib.MainLoop()


def stamp(sample):
    """The frame number bench/link.py burnt into the picture (its `read_stamp`, on the I420
    picture avdec gives: the luma plane first, rows padded to 4 bytes), or "-"."""
    width = sample.get_caps().get_structure(0).get_value("width")
    stride = (width + 3) & ~3
    ok, info = sample.get_buffer().map(Gst.MapFlags.READ)
    if not ok:
        return "-"
    try:
        data, q, levels = info.data, BLOCK // 4, []
        for i in range(BITS + 2):
            x = i * BLOCK + q
            total = sum(sum(data[r * stride + x:r * stride + x + 2 * q]) for r in range(q, 3 * q))
            levels.append(int(total > 128 * 4 * q * q))
    finally:
        sample.get_buffer().unmap(info)
    if levels[:2] != [1, 0]:
        return "-"
    return str(sum(bit << b for b, bit in enumerate(levels[2:])))


def on_sample(sink):
    sample = sink.emit("pull-sample")
    now = time.monotonic()  # CLOCK_MONOTONIC: the sender's perf_counter reads the same clock
    print(stamp(sample), f"{now:.6f}", flush=True)
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
