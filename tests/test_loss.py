"""A link that loses packets. The benchmark's parts: the loss model, the relay (real UDP
sockets), the player's rule (a frame that never came leaves the one before it); x264 over the
relay into two real FFmpeg receivers, where a lost packet must stay on screen until the next
IDR and no longer; SRT through the lossy proxy; and the warning a live run gives when its GOP
would hold a loss for long."""
from __future__ import annotations

import math
import socket
from fractions import Fraction

import av
import numpy as np
import pytest
from gst_helpers import require

from edge_semvc.bench import loss
from edge_semvc.bench.lossy_link import BurstLoss, Link, LossError, LossyRelay, port_pair


def _draws(model: BurstLoss, n: int) -> np.ndarray:
    return np.array([model.lost() for _ in range(n)])


def test_the_loss_model_loses_its_share_in_bursts_of_its_length():
    lost = _draws(BurstLoss(0.05, burst=3.0, seed=7), 200_000)
    assert lost.mean() == pytest.approx(0.05, abs=0.004)
    starts = np.flatnonzero(np.diff(lost.astype(int)) == 1)
    assert lost.sum() / len(starts) == pytest.approx(3.0, abs=0.2)
    # seeded: the same packets on every run, others with another seed
    assert np.array_equal(_draws(BurstLoss(0.05, 3.0, seed=7), 1000), lost[:1000])
    assert not np.array_equal(_draws(BurstLoss(0.05, 3.0, seed=8), 1000), lost[:1000])
    assert not _draws(BurstLoss(0.0), 10_000).any()
    independent = _draws(BurstLoss(0.02, burst=1.0, seed=1), 100_000)
    assert independent.mean() == pytest.approx(0.02, abs=0.003)
    assert not (independent[1:] & independent[:-1]).any()  # bursts of exactly one


@pytest.mark.parametrize("rate, burst, named", [(0.5, 1, "0.5"), (-0.01, 1, "-0.01"),
                                                 (math.nan, 1, "nan"), (0.01, 0.5, "0.5"),
                                                 (0.01, -2, "-2")])
def test_a_loss_model_that_cannot_be_is_refused_naming_the_value(rate, burst, named):
    with pytest.raises(LossError, match=named):
        BurstLoss(rate, burst)


def _rtp(seq: int, marker: bool, payload: bytes = b"x" * 20) -> bytes:
    return bytes([0x80, 0x60 | (0x80 if marker else 0)]) + seq.to_bytes(2, "big") + \
        bytes(8) + payload


def _listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(5)
    return s


def _received(s: socket.socket) -> list[bytes]:
    s.settimeout(0.3)
    got = []
    try:
        while True:
            got.append(s.recv(2048))
    except TimeoutError:
        return got


def test_the_relay_passes_everything_to_one_receiver_and_what_the_model_keeps_to_the_other():
    clean_port, lossy_port = port_pair(), port_pair()
    socks = {p: _listen(p) for p in (clean_port, clean_port + 1, lossy_port, lossy_port + 1)}
    relay = LossyRelay(BurstLoss(0.2, 2.0, seed=3), clean_port, lossy_port, spare_frames=3)
    relay.start()
    packets = [_rtp(seq, marker=seq % 2 == 1) for seq in range(200)]  # frames of 2 packets
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for p in packets:
                tx.sendto(p, ("127.0.0.1", relay.port))
            tx.sendto(b"\x80\xc8rtcp-sender-report", ("127.0.0.1", relay.port + 1))
            clean, lossy = _received(socks[clean_port]), _received(socks[lossy_port])
            rtcp = [_received(socks[p + 1]) for p in (clean_port, lossy_port)]
    finally:
        relay.stop()
        for s in socks.values():
            s.close()
    model = BurstLoss(0.2, 2.0, seed=3)
    kept = packets[:6] + [p for p in packets[6:] if not model.lost()]  # 3 frames spared
    assert clean == packets
    assert lossy == kept
    assert relay.lost == 200 - len(kept) > 20
    assert relay.packets == 200 and relay.frames == 100 and relay.gaps == 0
    assert rtcp == [[b"\x80\xc8rtcp-sender-report"]] * 2  # RTCP whole, to both


def test_the_relay_counts_packets_lost_before_it():
    relay = LossyRelay(BurstLoss(0.0), port_pair(), port_pair(), spare_frames=0)
    relay.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for seq in (65534, 65535, 0, 3, 4):  # wraps, then 1 and 2 missing
                tx.sendto(_rtp(seq, False), ("127.0.0.1", relay.port))
        for _ in range(100):
            if relay.packets == 5:
                break
            relay.join(0.02)
    finally:
        relay.stop()
    assert relay.gaps == 2


def test_a_settings_keyint_is_in_seconds_with_an_s_and_in_frames_without():
    keyints = {name: loss.setting_config(None, ["encoder.bitrate=1000000"], name, 29.97)
               .encoder.keyint for name in ("default", "gop", "idr1s", "refresh0.5s-slices")}
    assert keyints == {"default": 0, "gop": 250, "idr1s": 30, "refresh0.5s-slices": 15}


def test_a_frame_that_never_came_leaves_the_one_before_it_on_screen(tmp_path):
    """The player's rule, on a recording with frame 3 missing (each frame an IDR)."""
    path = tmp_path / "gap.ts"
    levels = [20, 60, 100, 140, 180, 220]
    with av.open(str(path), "w", format="mpegts") as out:
        s = out.add_stream("libx264", rate=10, options={"g": "1", "tune": "zerolatency"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 10)
        for i, level in enumerate(levels):
            frame = av.VideoFrame.from_ndarray(np.full((72, 64), level, np.uint8), "yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in s.encode(frame):
                if packet.pts != 3:
                    out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    shown = list(loss.frames_shown(path, 10.0, 8))
    means = [None if y is None else round(float(y.mean())) for y in shown]
    assert means == [20, 60, 100, 100, 180, 220, 220, 220]


@pytest.mark.parametrize("setting", ["idr1s", "refresh1s", "gop"])
def test_a_lost_packet_shows_until_the_picture_is_put_right_and_no_longer(tmp_path, setting):
    """x264 (threads 1, no map: the same packets every run) over the relay into two real
    FFmpeg receivers, 3 % of packets lost after the first second (150 frames sent, 90 of them
    judged). Damage starts only where a packet was lost and lasts: with an IDR every second
    (30 frames), until the next IDR that arrived whole; with intra refresh (period 30), less
    than two periods after the frame hit; with x264's own GOP (250 frames, longer than the
    run), to the end."""
    cfg = loss.setting_config(None, ["encoder.tune=zerolatency", "encoder.rc=cbr",
                                     "encoder.bitrate=1500000", "encoder.threads=1"],
                              setting, 30.0)
    sent = loss.send("demo://astronaut", cfg, False, BurstLoss(0.03, 2.0, seed=5), 3.0,
                     tmp_path, realtime=False)
    r = loss.judge(sent, "demo://astronaut", None, 3)
    hit, total = sent["frames_hit"], sent["frames_sent"]
    assert (total, sent["judged"], r["frames"]) == (150, (30, 90), 90)
    assert r["lost"] > 0 and hit[0] >= 30  # the first second whole
    damaged = {i for i, d in enumerate(_damaged(sent)) if d}
    if setting == "idr1s":
        assert damaged == _until_a_whole_idr(hit, total, 30)
    elif setting == "refresh1s":
        assert set(hit) <= damaged <= {i for h in hit for i in range(h, min(h + 60, total))}
    else:
        assert damaged == set(range(hit[0], total))
    assert 0 < r["damaged_area_pct"] <= 100 and r["psnr_lossy"] < r["psnr_clean"]
    assert r["frames_hit"] == len(hit)


def test_mpegts_over_udp_loses_what_the_model_drops_until_the_next_idr(tmp_path):
    """The UDP output's MPEG-TS through the relay (continuity counters checked) into two real
    FFmpeg receivers, an IDR every second: damage only from a frame hit, and none left once
    an IDR after the last hit arrived whole."""
    cfg = loss.setting_config(None, ["encoder.tune=zerolatency", "encoder.rc=cbr",
                                     "encoder.bitrate=1500000", "encoder.threads=1"],
                              "idr1s", 30.0)
    sent = loss.send("demo://astronaut", cfg, False, BurstLoss(0.03, 2.0, seed=5), 3.0,
                     tmp_path, realtime=False, transport="udp")
    r = loss.judge(sent, "demo://astronaut", None, 3)
    hit, total = sent["frames_hit"], sent["frames_sent"]
    assert (total, r["frames"]) == (150, 90) and r["lost"] > 0 and hit[0] >= 30
    damaged = {i for i, d in enumerate(_damaged(sent)) if d}
    expected = _until_a_whole_idr(hit, total, 30)
    # a datagram that starts a frame may end the one before: that one may be damaged too
    assert damaged and damaged - expected <= {h - 1 for h in hit}
    assert 0 < r["damaged_pct"] < 100 and r["psnr_lossy"] < r["psnr_clean"]


@pytest.mark.parametrize("latency_ms, rtt_ms", [(500, 0), (40, 80)])
def test_srt_resends_what_is_lost_while_its_latency_allows(tmp_path, latency_ms, rtt_ms):
    """x264 over SRT (GStreamer's srtsink and srtsrc, real time) through a proxy that loses 3 %
    of the data packets going forward: on loopback with half a second of latency (room for a
    busy machine) SRT resends each in time and the picture equals the run's own recording;
    with a round trip longer than its latency it cannot, and what it gives up on shows."""
    require("srt")
    cfg = loss.setting_config(None, ["encoder.tune=zerolatency", "encoder.rc=cbr",
                                     "encoder.bitrate=1000000"], "gop", 30.0)
    sent = loss.send_srt("demo://astronaut", cfg, False, BurstLoss(0.03, 2.0, seed=2), 2.0,
                         tmp_path, latency_ms, Link(rtt_ms))
    r = loss.judge(sent, "demo://astronaut", None, 3)
    assert r["frames"] == 60 and r["lost"] > 0 and r["srt_latency_ms"] == latency_ms
    if rtt_ms == 0:
        assert r["damaged_pct"] == 0 and r["psnr_lossy"] == r["psnr_clean"]
    else:
        assert r["damaged_pct"] > 0 and r["psnr_lossy"] < r["psnr_clean"]


def test_srt_waits_for_a_resend_a_frame_interval_longer_than_srts_own_default():
    """A frame's last packet, lost, is noticed only when the next frame's first arrives: the
    SRT output's default latency is SRT's 120 ms after that; a latency in the URI is kept."""
    from fractions import Fraction

    from edge_semvc.sinks import open_output
    from edge_semvc.sinks.base import StreamInfo
    from edge_semvc.sinks.gst_outputs import srt_latency_ms

    require("srt")
    assert [srt_latency_ms(f) for f in (10, 25, 30, 60, 0)] == [220, 160, 154, 137, 120]
    for uri, latency in (("srt://127.0.0.1:9", 220), ("srt://127.0.0.1:9?latency=50", 50)):
        out = open_output(uri)
        out.info = StreamInfo(64, 64, Fraction(10), Fraction(1, 10), "h264", b"", False)
        assert out._config()["latency"] == latency == out.stats()["latency_ms"]


def _until_a_whole_idr(hit: list[int], total: int, keyint: int) -> set[int]:
    """The frames from each frame hit to the next IDR (every `keyint`) that was not hit."""
    whole_idrs = [k for k in range(keyint, total + 1, keyint) if k not in hit]
    return {i for h in hit for i in range(h, next(k for k in whole_idrs if k > h))}


def _damaged(sent: dict) -> list[bool]:
    start = loss.first_pts(sent["files"]["clean"])
    pairs = zip(*(loss.frames_shown(sent["files"][k], sent["fps"], sent["frames_sent"], start)
                  for k in ("clean", "lossy")))
    return [b is None or not np.array_equal(a, b) for a, b in pairs]


def test_an_output_that_loses_packets_is_told_how_long_a_loss_shows(tmp_path):
    from edge_semvc.sinks import open_output
    from edge_semvc.sinks.base import loss_note

    rtp, udp = open_output("rtp://127.0.0.1:5004"), open_output("udp://127.0.0.1:5006")
    file = open_output(str(tmp_path / "never-written.mp4"))
    note = loss_note([file, rtp, udp], 250, False, 10.0)
    assert "rtp://127.0.0.1:5004, udp://127.0.0.1:5006" in note and "never-written" not in note
    assert "the next IDR, up to 25 s here (keyint 250 at 10 fps)" in note
    assert "two refresh periods, up to 6 s" in loss_note([rtp], 90, True, 30.0)
    assert "never comes" in loss_note([rtp], 1 << 30, False, 30.0)
    assert loss_note([rtp], 30, False, 30.0) is None  # a second: nothing to say
    assert loss_note([rtp], 75, True, 30.0) is None  # two periods of 2.5 s
    assert loss_note([file], 250, False, 10.0) is None  # a file loses nothing


def test_a_live_run_to_rtp_warns_once_where_its_keyint_would_hold_a_loss(caplog):
    from edge_semvc.config import load_config
    from edge_semvc.pipeline import run_encode
    from edge_semvc.sources import open_source

    # 0: the product's own keyint for such outputs (2 s); 250: x264's GOP, asked for
    for keyint, warned in ((0, 0), (250, 1), (30, 0)):
        caplog.clear()
        cfg = load_config(None, ["encoder.tune=zerolatency", f"encoder.keyint={keyint}"])
        with caplog.at_level("INFO", logger="edge_semvc"):
            run_encode(open_source("demo://astronaut"), f"rtp://127.0.0.1:{port_pair()}",
                       cfg, semantic=False, max_frames=3)
        notes = [r.getMessage() for r in caplog.records if "shows until" in r.getMessage()]
        assert len(notes) == warned
        if warned:
            assert "up to 8 s here (keyint 250 at 30 fps)" in notes[0]
        chosen = [r.getMessage() for r in caplog.records if "lossy_keyint_s" in r.getMessage()
                  and r.levelname == "INFO"]
        assert len(chosen) == (keyint == 0)
        if chosen:
            assert chosen[0].endswith(" can lose packets: an IDR every 60 frames "
                                      "(encoder.lossy_keyint_s: 2 s)")


@pytest.mark.parametrize("outputs, sets, keyint", [
    (["rtp://127.0.0.1:5004"], [], 20),  # 2 s at 10 fps
    (["udp://127.0.0.1:5006", "{file}"], [], 20),  # one output that loses packets is enough
    (["srt://127.0.0.1:5008"], [], 20),
    (["rtp://127.0.0.1:5004"], ["encoder.lossy_keyint_s=0.5"], 5),
    (["rtp://127.0.0.1:5004"], ["encoder.lossy_keyint_s=0.01"], 1),  # at least every frame
    (["rtp://127.0.0.1:5004"], ["encoder.intra_refresh=true"], 20),  # the refresh period
    (["rtp://127.0.0.1:5004"], ["encoder.keyint=250"], 250),  # asked for: kept
    (["rtp://127.0.0.1:5004"], ["encoder.lossy_keyint_s=0"], None),  # x264's default
    (["{file}"], [], None),  # a file loses nothing
])
def test_outputs_that_lose_packets_get_an_idr_every_lossy_keyint_s(tmp_path, outputs, sets,
                                                                  keyint):
    from fractions import Fraction

    from edge_semvc.config import load_config
    from edge_semvc.encoder_setup import encoder_settings
    from edge_semvc.pipeline import open_outputs

    class TenFps:
        width, height, fps, time_base = 64, 64, Fraction(10), Fraction(1, 10)

    cfg = load_config(None, ["encoder.bitrate=500000", *sets])
    uris = [u.format(file=tmp_path / "out.mp4") for u in outputs]
    assert encoder_settings(cfg, TenFps(), open_outputs(uris)).keyint == keyint


def test_a_run_with_an_rtp_output_has_an_idr_every_two_seconds(tmp_path):
    """The real encoder, an RTP output and a file beside it (one encoder feeds both): IDRs
    at 0 and 2 s of the 30 fps demo (90 frames), where a run to the file alone has x264's
    one."""
    import av

    from edge_semvc.config import load_config
    from edge_semvc.pipeline import run_encode
    from edge_semvc.sources import open_source

    cfg = load_config(None, ["encoder.tune=zerolatency", "encoder.bitrate=500000"])
    for outputs, keyframes in (([f"rtp://127.0.0.1:{port_pair()}"], [0, 60]), ([], [0])):
        path = tmp_path / f"{len(outputs)}.mp4"
        run_encode(open_source("demo://astronaut"), [*outputs, str(path)], cfg, semantic=False)
        with av.open(str(path)) as c:
            assert [i for i, p in enumerate(c.demux(c.streams.video[0]))
                    if p.is_keyframe] == keyframes


@pytest.mark.parametrize("value", ["-1", "61", "nan", "inf"])
def test_a_bad_lossy_keyint_is_refused_naming_it(value):
    from edge_semvc.config import load_config
    from edge_semvc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"encoder\.lossy_keyint_s: '?(-1|61|nan|inf)"):
        load_config(None, [f"encoder.lossy_keyint_s={value}"])


def test_a_round_trip_for_rtp_is_refused_naming_it(capsys):
    with pytest.raises(SystemExit) as e:
        loss.main(["clip.mp4", "--rtt", "80"])
    assert e.value.code == 2 and "--rtt 80: a round trip matters to SRT only" in \
        capsys.readouterr().err


def test_a_capacity_is_read_as_rates_from_times_and_refused_naming_the_part(capsys):
    from edge_semvc.bench.lossy_link import parse_capacity

    assert parse_capacity("2.5M@0,800k@15,1.5M") == ((0, 2.5e6), (15, 8e5), (30, 1.5e6))
    assert parse_capacity("300000") == ((0, 3e5),)
    for bad in ("fast", "1M@5,2M@3", "0@0", "1M@x"):
        with pytest.raises(LossError, match=f"capacity '{bad.split(',')[-1]}'"):
            parse_capacity(bad)
    with pytest.raises(SystemExit) as e:
        loss.main(["clip.mp4", "--capacity", "1M"])
    assert e.value.code == 2 and "--capacity: SRT only" in capsys.readouterr().err
