"""A real receiver for the GStreamer outputs' tests, run with the system Python (PyGObject):
GStreamer's rtspsrc (the depayloaded elementary stream) or srtsrc (the MPEG-TS) written to
standard output, for PyAV to decode.

    /usr/bin/python3 tests/gst_receiver.py rtsp://127.0.0.1:PORT/PATH h264|hevc tcp|udp [USER PW]
    /usr/bin/python3 tests/gst_receiver.py 'srt://127.0.0.1:PORT?mode=listener' [es]
    /usr/bin/python3 tests/gst_receiver.py FILE.sdp

An SDP (the RTP output's: H.264 and AAC): sdpdemux, the video depayloaded and dropped, the
AAC depayloaded (RFC 3640) and written as ADTS.

`es`: the elementary stream out of the MPEG-TS (tsdemux: each access unit as soon as its PES
is whole), instead of the MPEG-TS itself.

Runs until killed or its reader goes.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

Gst.init(None)
uri = sys.argv[1]
if uri.startswith("rtsp://"):
    codec, protocols = sys.argv[2], sys.argv[3]
    auth = f"user-id={sys.argv[4]} user-pw={sys.argv[5]}" if len(sys.argv) > 5 else ""
    depay, caps = {"h264": ("rtph264depay", "video/x-h264"),
                   "hevc": ("rtph265depay", "video/x-h265")}[codec]
    desc = (f"rtspsrc location={uri} protocols={protocols} latency=0 {auth} ! {depay} ! "
            f"{caps},stream-format=byte-stream,alignment=au ! fdsink fd=1 sync=false")
elif uri.endswith(".sdp"):
    desc = (f"filesrc location={uri} ! sdpdemux name=d latency=0 "
            "d. ! queue ! rtph264depay ! fakesink sync=false "
            "d. ! queue ! rtpmp4gdepay ! aacparse ! audio/mpeg,stream-format=adts ! "
            "fdsink fd=1 sync=false")
else:
    demux = "tsdemux ! " if sys.argv[2:] == ["es"] else ""
    desc = f'srtsrc uri="{uri}" latency=50 ! {demux}fdsink fd=1 sync=false'
pipeline = Gst.parse_launch(desc)
loop = GLib.MainLoop()


def on_message(bus, msg):
    if msg.type in (Gst.MessageType.ERROR, Gst.MessageType.EOS):
        if msg.type == Gst.MessageType.ERROR:
            print(msg.parse_error()[0].message, file=sys.stderr, flush=True)
        loop.quit()


bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message", on_message)
pipeline.set_state(Gst.State.PLAYING)
loop.run()
pipeline.set_state(Gst.State.NULL)
sys.exit(1)
