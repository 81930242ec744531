"""serve keeps a camera's stream outputs open across its runs (sinks/kept.py): each run's
encoder starts its timestamps again, and what a receiver gets goes on after the pause that
passed; a new stream opens the output anew. Real x264 packets, real outputs and receivers,
an injected clock."""
from __future__ import annotations

import dataclasses
from fractions import Fraction

import av
import pytest
from test_outputs import Datagrams, Receiver, encoded
from test_telemetry import free_port, wait_until

from edge_semvc.bench.link import udp_bound
from edge_semvc.sinks import open_output
from edge_semvc.sinks.base import Outputs
from edge_semvc.sinks.kept import KeptOutput


def camera_runs(kept, now: list[float], runs, on_open=lambda stream, outputs: None):
    """A camera's runs into `kept` on the injected clock `now`: each run's (stream, packets) a
    frame (1/30 s) apart, `on_open(stream, outputs)` once its outputs are open, then the camera
    away for 2 s."""
    for stream, packets in runs:
        with Outputs([kept]).open(stream) as outputs:
            on_open(stream, outputs)
            for p in packets:
                outputs.write(p)
                now[0] += 1 / 30
        now[0] += 2.0


def test_a_kept_output_follows_on_across_runs_and_opens_anew_for_a_new_stream():
    """serve keeps a camera's stream outputs across its runs (sinks/kept.py): each run's
    encoder starts its timestamps again, the receiver sees one stream whose times go on, after
    the pause that passed (2 s here, on the injected clock). A run of another size goes on in
    the same muxer; one of another codec opens the output anew."""
    info, packets = encoded(30)
    port, now = free_port(), [100.0]
    kept = KeptOutput(lambda: open_output(f"udp://127.0.0.1:{port}"), lambda: now[0])
    first = kept.inner
    rx = Receiver(f"udp://127.0.0.1:{port}?overrun_nonfatal=1&fifo_size=500000", "mpegts")
    rx.start()
    wait_until(lambda: udp_bound(port), what="the UDP receiver's socket")
    for _run in range(2):
        with Outputs([kept]).open(info) as outputs:  # its close ends the run only
            for p in packets:
                outputs.write(p)
                now[0] += 1 / 30
            assert kept.stats()["paused"] is False
        assert kept.stats()["paused"] is True  # between runs: nothing is sent
        now[0] += 2.0  # the camera was away
    assert kept.inner is first and kept.stats()["packets"] == 60
    kept.open(dataclasses.replace(info, width=info.width // 2))
    assert kept.inner is first and "reopened" not in kept.stats()
    kept.open(dataclasses.replace(info, codec="hevc"))
    assert kept.inner is not first and kept.stats()["reopened"] == 1
    kept.close_for_good()
    first.close()
    rx.join(60)
    pts = [p for p, _, _ in rx.frames]
    assert len(pts) >= 58, rx.error
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert all(s > 0 for s in steps), steps  # never back in time
    assert max(steps) == 3000 + 2 * 90000, steps  # a frame, then the pause, in 90 kHz


def test_a_kept_output_times_the_pause_by_the_frames_not_by_a_lookahead_drain(tmp_path):
    """An encoder with a lookahead (x264's default tune) hands the frames it holds on when the
    run ends, 5 s after the input froze: timed by their sending, the pause came out 5 s short
    (a 10 s freeze seen as 6.3 s by an SRT receiver) and the next run's frames arrived seconds
    behind their times. The pause is the one between the frames' times (injected clock)."""
    info, packets = encoded(30)
    held, lookahead_s, stall_s, away_s = 10, 10 / 30, 5.0, 8.0
    tb, now = info.time_base, [0.0]
    path = tmp_path / "kept.ts"
    kept = KeptOutput(lambda: open_output(str(path)), lambda: now[0])
    for run in range(2):
        start = now[0]  # the run's first frame taken then: each frame leaves lookahead_s after
        with Outputs([kept]).open(info) as outputs:
            for i, p in enumerate(packets):
                if run == 0 and i == len(packets) - held:  # the input froze: lost, drained
                    now[0] = start + float(packets[-1].pts * tb) + stall_s
                elif run == 1 or i < len(packets) - held:
                    now[0] = start + float(p.pts * tb) + lookahead_s
                outputs.write(p)
        now[0] = start + float(packets[-1].pts * tb) + away_s  # the next run's first frame
    kept.close_for_good()
    with av.open(str(path)) as c:
        times = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.pts is not None]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 60 and min(gaps) > 0
    assert max(gaps) == pytest.approx(away_s, abs=0.02)  # 2.99 s before


def test_a_kept_output_given_a_new_stream_keeps_its_times_going_on():
    """A camera that came back with another stream (its frame rate here) opened its outputs
    anew with the new encoder's times, from 0: a UDP receiver, which stays, saw the stream's
    time go back (a recorder's file with it). They go on after the pause, as across a hiccup
    (and in the same MPEG-TS muxer: its continuity counters go on)."""
    info, packets = encoded(20)
    port, now = free_port(), [100.0]
    kept = KeptOutput(lambda: open_output(f"udp://127.0.0.1:{port}"), lambda: now[0])
    rx = Receiver(f"udp://127.0.0.1:{port}?overrun_nonfatal=1&fifo_size=500000", "mpegts")
    rx.start()
    wait_until(lambda: udp_bound(port), what="the UDP receiver's socket")
    camera_runs(kept, now, [(info, packets), (dataclasses.replace(info, fps=Fraction(15)),
                                               packets)])
    kept.close_for_good()
    rx.join(60)
    assert "reopened" not in kept.stats()
    times = [pts for pts, _key, _corrupt in rx.frames]
    assert len(times) == 40 and times == sorted(times)  # 39 s went back to 0
    assert times[20] - times[19] == pytest.approx(2 * 90000, abs=3000 + 1)


def test_an_rtp_receiver_that_stays_gets_the_stream_of_another_size_going_on(tmp_path):
    """A camera that came back at another size opened its RTP output anew: FFmpeg's muxer
    started a new SSRC, new sequence numbers and a random RTP timestamp base, and a receiver
    that stayed on the SDP saw the time jump by a random amount (back half the time; hours).
    The same RTP session goes on: the frames' times follow on by the pause, the new parameter
    sets come in-band before the IDR, the SDP is written anew with them."""
    big, big_packets = encoded(20)
    small, small_packets = encoded(20, size=(320, 176))
    port, sdp, now = free_port(), tmp_path / "cam.sdp", [100.0]
    kept = KeptOutput(lambda: open_output(f"rtp://127.0.0.1:{port}?sdp={sdp}"),
                      lambda: now[0])
    rx = Receiver(str(sdp), "sdp", {"protocol_whitelist": "file,udp,rtp",
                                    "reorder_queue_size": "0"}, sizes=True)
    sdps = []

    def opened(stream, outputs):
        sdps.append(sdp.read_text())
        if stream is big:
            rx.start()
            wait_until(lambda: udp_bound(port), what="the RTP receiver's socket")

    camera_runs(kept, now, [(big, big_packets), (small, small_packets)], opened)
    kept.close_for_good()
    rx.join(60)
    times = [pts for pts, _key, _corrupt in rx.frames]
    assert len(times) == 40, rx.error
    assert times[20] - times[19] == 3000 + 2 * 90000, times  # a frame, then the pause
    assert rx.sizes[19] == (640, 360) and rx.sizes[20] == (320, 176)
    assert not any(corrupt for _, _, corrupt in rx.frames)
    assert "reopened" not in kept.stats() and sdps[0] != sdps[1]  # the parameter sets


def test_a_udp_output_opened_anew_says_so_to_a_receiver_that_stays():
    """A camera back with another codec opened its UDP output anew: the new MPEG-TS muxer's
    PAT and PMT had version 0 again, like the old ones (a receiver that goes by the version
    kept the old stream's PMT), and each PID's continuity counter started again unannounced
    (counted as lost packets). The tables' version goes up; the first packet of each PID
    carries the discontinuity indicator. A UDP socket gets the datagrams as sent."""
    h264, h264_packets = encoded(10)
    hevc, hevc_packets = encoded(10, backend="x265")
    with Datagrams() as rx:
        got = rx.got
        port, now = rx.port, [100.0]
        kept = KeptOutput(lambda: open_output(f"udp://127.0.0.1:{port}"), lambda: now[0])
        sent = []
        for stream, packets in ((h264, h264_packets), (hevc, hevc_packets)):
            with Outputs([kept]).open(stream) as outputs:
                for p in packets:
                    outputs.write(p)
                    now[0] += 1 / 30
            sent.append(kept.stats()["bytes_sent"])
        kept.close_for_good()
        wait_until(lambda: sum(map(len, got)) >= sum(sent), what="the datagrams")
    assert kept.stats()["reopened"] == 1
    ts = [d[i:i + 188] for d in got for i in range(0, len(d), 188)]
    pmts = [version(p) for p in ts if pid(p) == 0x1000 and p[1] & 0x40]
    assert pmts[0] == 0 and pmts[-1] == 1 and pmts == sorted(pmts), pmts
    anew = next(i for i, p in enumerate(ts) if pid(p) == 0 and version(p))
    first = {}
    for p in ts[anew:]:
        first.setdefault(pid(p), p)
    assert {0, 0x1000, 0x100} <= set(first)
    for p in first.values():  # adaptation field with the discontinuity indicator
        assert p[3] & 0x20 and p[4] and p[5] & 0x80, p[:8].hex()


def pid(ts_packet: bytes) -> int:
    return ((ts_packet[1] & 0x1F) << 8) | ts_packet[2]


def version(ts_packet: bytes) -> int:
    """The version of the table (PAT, PMT) whose section starts in this TS packet."""
    section = 5 + (1 + ts_packet[4] if ts_packet[3] & 0x20 else 0)  # after the pointer field
    return (ts_packet[section + 5] >> 1) & 0x1F
