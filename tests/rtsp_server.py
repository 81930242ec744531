"""A real RTSP server for the service's tests: GStreamer's RTSP server library (Debian's
gir1.2-gst-rtsp-server-1.0) serving a live test pattern encoded with x264 at real time.

Run with the system Python, which has PyGObject: `/usr/bin/python3 tests/rtsp_server.py PORT`.
Prints "ready" once it listens; serves rtsp://127.0.0.1:PORT/cam until killed.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,"
                   "framerate=15/1 ! x264enc tune=zerolatency speed-preset=ultrafast "
                   "key-int-max=15 ! rtph264pay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
