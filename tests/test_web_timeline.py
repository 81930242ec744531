"""The web page's live picture on its media timeline (sinks/fmp4.Timeline), with and without
B-frames: frames the pipeline dropped or the storage profile left out leave no hole in it and
never put two frames at one presentation time (MSE would drop the one buffered first, and every
frame that depends on it, up to the next keyframe)."""
from __future__ import annotations

import struct

import pytest

from edge_semvc.encoders import get_encoder
from edge_semvc.encoders.base import EncoderSettings
from edge_semvc.sinks.base import StreamInfo
from edge_semvc.sinks.mse import LiveFeed, MseOutput
from edge_semvc.sources import open_source


def sample_times(fragment: bytes) -> tuple[int, int, int]:
    """(decode time, duration, presentation time) of the one sample of a fragment."""
    at = fragment.find(b"tfdt")
    decode = int.from_bytes(fragment[at + 8:at + 16], "big")
    at = fragment.find(b"trun")
    duration, = struct.unpack_from(">I", fragment, at + 16)
    shown, = struct.unpack_from(">i", fragment, at + 28)  # version 1: a signed offset
    return decode, duration, decode + shown


@pytest.mark.parametrize("tune", ["zerolatency", "film"])  # film: x264's B-frames
def test_frames_dropped_or_left_out_leave_no_hole_and_share_no_time(tune):
    src = open_source("demo://astronaut")
    s = EncoderSettings(width=src.width, height=src.height, fps=src.fps,
                        time_base=src.time_base, tune=tune, keyint=250, global_headers=True)
    feed, dropped, left_out = LiveFeed(), {10, 11, 12, 40}, {25, 26}
    out, reader, chunks = MseOutput(feed), None, []
    with get_encoder("x264")(s) as enc:
        out.open(StreamInfo(s.width, s.height, s.fps, s.time_base, enc.codec, enc.headers(), True))
        for i, frame in enumerate(src.frames()):
            if i == 70:
                break
            if i in dropped:  # the pipeline fell behind: never asked about, never encoded
                continue
            idr = out.wants_idr(frame.pts)
            if i in left_out:  # the storage profile leaves it out
                out.left_out(frame.pts)
                continue
            for packet in enc.encode(frame, force_idr=idr):
                out.write(packet)
                reader = reader or feed.subscribe()  # asks for an IDR: its first fragment
        for packet in enc.flush():
            out.write(packet)
    src.close()
    out.close()
    while not reader.queue.empty():
        chunk = reader.get(timeout=1)
        if isinstance(chunk, bytes):
            chunks.append(chunk)
    samples = [sample_times(c) for c in chunks[1:]]  # after the init segment
    assert len(samples) > 40
    decode = [d for d, _, _ in samples]
    assert decode == sorted(set(decode))  # rising
    interval = samples[0][1]
    shown = sorted(p for _, _, p in samples)
    steps = {b - a for a, b in zip(shown, shown[1:])}
    assert steps <= {interval - 1, interval, interval + 1}, steps  # end to end, none shared
