"""The GStreamer child's packet feed (sinks/gst_child.py) in the system Python, on a real
appsrc pipeline: what it stamps on each packet."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gst_helpers import GUARD_S, require

from edge_semvc.sinks import gstreamer as gst

FEED_SCRIPT = """
import json, sys
sys.path.insert(0, %r)
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
import gst_child as c
Gst.init(None)
pipeline = Gst.parse_launch("appsrc name=src is-live=true format=time do-timestamp=true "
                            "! fakesink name=sink sync=false")
src, sink = pipeline.get_by_name("src"), pipeline.get_by_name("sink")
stamps = []
sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER,
                                      lambda pad, info: stamps.append(info.get_buffer().pts)
                                      or Gst.PadProbeReturn.OK)
feed = c.Feed(Gst)
feed.attach(src)
pipeline.set_state(Gst.State.PAUSED)
clock = Gst.SystemClock.obtain()
src.set_clock(clock)            # the moment an RTSP media goes to PLAYING: a clock, no base time
feed.push(b"IDR", True, 0, 0)
pipeline.set_state(Gst.State.PLAYING)
pipeline.get_state(Gst.CLOCK_TIME_NONE)
feed.push(b"P", False, 1, 1)
while len(stamps) < 2:
    pass
running = clock.get_time() - src.get_base_time()
print(json.dumps({"stamps": stamps, "running": running}))
pipeline.set_state(Gst.State.NULL)
"""


def test_no_packet_is_stamped_ahead_of_the_running_time():
    """An RTSP client's media starts playing while packets come: a packet pushed when its
    appsrc has a clock but not yet a base time must not carry the clock's absolute time (hours
    ahead of the running time: the server's sink would hold that client's stream for hours)."""
    require("rtsp")
    out = subprocess.run([gst.gst_python(), "-c", FEED_SCRIPT % str(Path(gst.CHILD).parent)],
                         capture_output=True, text=True, check=True, timeout=GUARD_S).stdout
    r = json.loads(out.splitlines()[-1])
    assert len(r["stamps"]) == 2 and all(0 <= t <= r["running"] for t in r["stamps"]), r


TRACK_SCRIPT = """
import json, sys
sys.path.insert(0, %r)
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
import gst_child as c
Gst.init(None)
pipeline = Gst.parse_launch("appsrc name=v is-live=true format=time ! fakesink name=vs sync=false "
                            "async=false appsrc name=a is-live=true format=time ! fakesink "
                            "name=as sync=false async=false")
stamps = {"vs": [], "as": []}
for name in stamps:
    pipeline.get_by_name(name).get_static_pad("sink").add_probe(
        Gst.PadProbeType.BUFFER,
        lambda pad, info, n=name: stamps[n].append(info.get_buffer().pts) or Gst.PadProbeReturn.OK)
pipeline.set_state(Gst.State.PLAYING)
feed = c.Feed(Gst)
feed.attach(pipeline.get_by_name("v"), tracks=[pipeline.get_by_name("a")])
S = 1_000_000_000
feed.push(b"A0", False, 5 * S, 5 * S, 1)            # before the video's key frame: not sent
feed.push(b"IDR", True, 5 * S + 40_000_000, 5 * S + 40_000_000)
feed.push(b"A_", False, 5 * S + 10_000_000, 5 * S + 10_000_000, 1)  # before it, coming after
feed.push(b"A1", False, 5 * S + 60_000_000, 5 * S + 60_000_000, 1)
feed.push(b"A2", False, 5 * S + 50_000_000, 5 * S + 50_000_000, 2)  # no such track here
while len(stamps["vs"]) < 1 or len(stamps["as"]) < 1:
    pass
print(json.dumps(stamps))
pipeline.set_state(Gst.State.NULL)
"""


def test_a_tracks_packets_follow_the_video_on_its_clock():
    """An RTSP client's audio starts with the video's key frame and is stamped with the video's
    offset from the encoder's clock: 20 ms after the IDR in the input, 20 ms after it out. The
    audio from before the key frame is not sent, even when it comes after it (an input's
    audio lags its video): it went out stamped at the running time's start, a client's first
    ten and more audio packets at one instant, where its media's first IDR came before PLAY."""
    require("rtsp")
    out = subprocess.run([gst.gst_python(), "-c", TRACK_SCRIPT % str(Path(gst.CHILD).parent)],
                         capture_output=True, text=True, check=True, timeout=GUARD_S).stdout
    r = json.loads(out.splitlines()[-1])
    assert len(r["vs"]) == 1 and len(r["as"]) == 1, r
    assert r["as"][0] - r["vs"][0] == 20_000_000, r
