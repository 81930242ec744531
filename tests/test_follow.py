"""The bit rate follows the link (`encoder.follow_link`, follow.py): the follower's rule on
reports made here (the reports are counted, never timed), its configuration, and a real run:
x264 over SRT (GStreamer's srtsink and srtsrc, real time) through a proxy whose link is much
narrower than the stream."""
from __future__ import annotations

import logging

import pytest
from gst_helpers import require

from edge_semvc.config import load_config
from edge_semvc.encoders.config import FollowLinkConfig
from edge_semvc.errors import ConfigError
from edge_semvc.follow import (
    DECREASE,
    INCREASE,
    MAX_DECREASE,
    SETTLE,
    WINDOW,
    LinkFollower,
)
from edge_semvc.values import LinkReport

TARGET = 2_000_000
STEP = SETTLE + WINDOW  # reports from one change to the next


class Reports:
    """One output's reports: each `next` adds a second's packets to the running counts."""

    def __init__(self):
        self.seq = self.sent = self.resent = self.dropped = 0

    def next(self, sent=150, resent=0, rtt_ms=20.0, dropped=0, peers=1,
             silent=0) -> list[LinkReport]:
        """`silent`: peers that acknowledged nothing (the counts are the others')."""
        self.seq += 1
        self.sent, self.resent = self.sent + sent, self.resent + resent
        self.dropped += dropped
        return [LinkReport(self.seq, peers, rtt_ms, self.sent, self.resent, self.dropped,
                           silent)]


def _follower(min_bitrate=100_000) -> tuple[LinkFollower, Reports]:
    return LinkFollower(FollowLinkConfig(True, min_bitrate), TARGET), Reports()


def test_a_link_that_carries_the_stream_leaves_its_rate_alone():
    f, r = _follower()
    assert [f.update(r.next()) for _ in range(20)] == [None] * 20
    assert f.stats() == {"bitrate": TARGET, "target": TARGET, "lowest": TARGET,
                         "decreases": 0, "increases": 0, "reports": 20}


def test_a_radios_own_loss_sent_again_without_a_queue_leaves_the_rate_alone():
    """Lowering the rate would not bring those packets back: SRT's resends do."""
    f, r = _follower()
    assert all(f.update(r.next(resent=15)) is None for _ in range(20))  # 10 %


def test_a_burst_the_links_buffer_cannot_hold_lowers_the_rate():
    """An IDR sent again in part behind a queue: its resends come late, the picture breaks."""
    f, r = _follower()
    for _ in range(WINDOW):
        f.update(r.next())
    assert f.update(r.next(resent=10, rtt_ms=200.0)) == round(TARGET * DECREASE * (1 - 20 / 300))


def test_a_stream_the_link_cannot_carry_is_lowered_after_a_window_and_each_window_after():
    f, r = _follower(min_bitrate=10_000)
    rates = [f.update(r.next(resent=30, rtt_ms=230.0)) for _ in range(WINDOW + 2 * STEP)]
    assert rates[:WINDOW - 1] == [None] * (WINDOW - 1)
    changed = [x for x in rates if x is not None]
    assert len(changed) == 3 and rates[WINDOW - 1] == changed[0]
    assert changed[0] == round(TARGET * DECREASE * (1 - 2 * 30 / 150))  # of what got through
    assert all(b <= a * DECREASE for a, b in zip(changed, changed[1:]))
    rates = [f.update(r.next(resent=150)) for _ in range(STEP)]  # all sent again
    assert rates[-1] == round(changed[-1] * MAX_DECREASE)  # at most MAX_DECREASE a window


def test_it_never_goes_below_min_bitrate():
    f, r = _follower(min_bitrate=500_000)
    for _ in range(20 * WINDOW):
        f.update(r.next(resent=100, rtt_ms=300.0))
    assert f.bitrate == f.lowest == 500_000


@pytest.mark.parametrize("congestion", [{"rtt_ms": 200.0}, {"dropped": 1}],
                         ids=["a queue in every report", "a packet given up"])
def test_a_queue_that_stays_or_a_packet_given_up_lowers_the_rate(congestion, caplog):
    f, r = _follower()
    for _ in range(5):
        f.update(r.next())  # the least round trip: 20 ms
    with caplog.at_level(logging.INFO, logger="edge_semvc.follow"):
        rates = [f.update(r.next(**congestion)) for _ in range(WINDOW)]
    assert round(TARGET * DECREASE) in rates and f.bitrate < TARGET
    # the line says why (a cut link's said "sent again 0%, round trip 1 ms" and nothing more)
    given_up = congestion.get("dropped", 0)
    assert f"sent again 0%, given up {given_up}, round trip" in caplog.text


def test_a_clean_link_raises_the_rate_again_up_to_encoder_bitrate_and_no_further():
    f, r = _follower()
    for _ in range(WINDOW):
        f.update(r.next(resent=75))
    low = f.bitrate
    rates = [f.update(r.next()) for _ in range(40)]
    assert rates[:STEP] == [None] * (STEP - 1) + [round(low * INCREASE)]
    assert max(x for x in rates if x) == TARGET == f.bitrate
    assert f.stats()["decreases"] == 1 and f.stats()["increases"] >= 4


def test_a_new_target_is_a_ceiling_held_at_once():
    f, r = _follower()
    f.retarget(1_000_000)
    assert f.bitrate == 1_000_000
    f.retarget(3_000_000)
    assert f.bitrate == 1_000_000  # climbs there on clean reports
    assert [f.update(r.next()) for _ in range(WINDOW)] == [None] * (WINDOW - 1) + \
        [round(1e6 * INCREASE)]


def test_nobody_connected_a_report_seen_twice_or_a_new_sender_change_nothing():
    f, r = _follower()
    for _ in range(WINDOW + 1):
        reports = r.next(resent=100, rtt_ms=300.0, peers=0)
        assert f.update(reports) is None and f.update(reports) is None
    restarted = [LinkReport(r.seq + 1, 1, 300.0, 10, 9, 0)]  # counts start again
    assert f.update(restarted) is None and f.bitrate == TARGET


def test_an_outputs_reports_from_before_the_follower_are_not_judged():
    """serve keeps a camera's outputs open across its runs, and each run has a follower of
    its own: the first report it sees is the output's whole history (a congested minute long
    gone), which it judged as one window with the next report."""
    f, r = _follower()
    for _ in range(60):  # the runs before: a link that lost a third for a minute
        history = r.next(resent=50, rtt_ms=300.0)
    assert f.update(history) is None
    assert [f.update(r.next()) for _ in range(10)] == [None] * 10
    assert f.stats()["decreases"] == 0 and f.stats()["reports"] == 10


def test_a_window_cut_by_the_peer_going_is_not_judged_with_the_next_peers_reports():
    """A link cut: packets given up, then nobody connected for a while; the peer that comes
    back is judged on its own reports (a 2000 -> 1700 cut, then 1700 -> 1445 on the first
    clean report after the reconnect, before)."""
    f, r = _follower()
    for _ in range(5):
        f.update(r.next())
    assert f.update(r.next(dropped=3)) == round(TARGET * DECREASE)  # the link is cut
    for _ in range(SETTLE + 1):  # left out, then half a window
        assert f.update(r.next(dropped=3)) is None
    for _ in range(5):  # SRT's peer gone
        assert f.update(r.next(sent=0, peers=0)) is None
    back = Reports()  # a new connection's counts
    rates = [f.update(back.next()) for _ in range(2 * WINDOW)]  # clean: up, then up again
    assert rates == [None, round(TARGET * DECREASE * INCREASE), None, TARGET]
    assert f.stats()["decreases"] == 1


def test_a_peer_that_stops_acknowledging_leaves_the_rate_alone():
    """A receiver gone without a word (SRT says so after 5 s) or a link cut outright: the
    sender gives up packets nobody acknowledges, which says nothing of the link's width (before:
    1500 -> 1083 kbit/s for a vanished viewer); the window before it is not judged with the
    reports after it."""
    f, r = _follower()
    f.update(r.next(dropped=3))  # half a window given up, then the peer goes silent
    assert [f.update(r.next(dropped=40, resent=20, rtt_ms=900.0, silent=1))
            for _ in range(5)] == [None] * 5
    assert f.update(r.next()) is None and f.update(r.next()) is None
    assert f.stats()["decreases"] == 0


def test_the_peers_heard_are_judged_while_another_is_silent():
    """An SRT listener's two viewers, one frozen (the sender leaves its counts out and says it
    is silent): the other's congestion still lowers the rate, its clean link leaves it."""
    f, r = _follower()
    rates = [f.update(r.next(resent=30, rtt_ms=400.0, peers=2, silent=1)) for _ in range(WINDOW)]
    assert rates == [None, round(TARGET * DECREASE * (1 - 2 * 30 / 150))]
    f, r = _follower()
    assert all(f.update(r.next(peers=2, silent=1)) is None for _ in range(5))


def test_two_outputs_are_judged_together():
    """Their packets add up; the worst round trip counts."""
    f, a, b = LinkFollower(FollowLinkConfig(True), TARGET), Reports(), Reports()
    rates = [f.update(a.next(resent=0) + b.next(resent=60)) for _ in range(WINDOW)]
    assert rates[-1] == round(TARGET * DECREASE * (1 - 2 * 60 / 300))


@pytest.mark.parametrize("sets, named", [
    (["encoder.follow_link.enabled=true"], "encoder.follow_link.enabled"),  # crf: no target
    (["encoder.bitrate=1000000", "encoder.follow_link.enabled=true",
      "encoder.follow_link.min_bitrate=2000000"], "encoder.follow_link.min_bitrate"),
    (["encoder.bitrate=1000000", "encoder.profile=storage",
      "encoder.follow_link.enabled=true"], "encoder.follow_link.enabled"),
    (["encoder.bitrate=1000000", "encoder.backend=x265",
      "encoder.follow_link.enabled=true"], "encoder.follow_link.enabled"),
])
def test_a_follower_that_cannot_work_is_refused_naming_the_key(sets, named):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    assert named in str(e.value)


def test_a_follower_with_no_output_that_reports_says_so(tmp_path, caplog):
    from edge_semvc.encoder_setup import link_follower
    from edge_semvc.pipeline import open_outputs

    cfg = load_config(None, ["encoder.bitrate=1000000", "encoder.follow_link.enabled=true"])
    with caplog.at_level(logging.WARNING, logger="edge_semvc"):
        assert link_follower(cfg, open_outputs([str(tmp_path / "a.mp4")])) is None
    assert "no output reports on its link" in caplog.text


def test_serves_stats_give_the_followers_rate_as_the_target():
    """`serve`'s stats (MQTT, the page, Prometheus' target gauge) say the target the encoder
    has now: with the follower, its rate, not encoder.bitrate (its ceiling, in follow_link)."""
    from edge_semvc.serve.camera import Camera
    from edge_semvc.serve.config import CameraConfig
    from edge_semvc.serve.stats import StatsWindow

    cfg = load_config(None, ["encoder.bitrate=2000000", "encoder.follow_link.enabled=true"])
    camera = Camera("drone", CameraConfig(input="demo://astronaut"), cfg, None,
                    lambda *_: None)
    f, r = _follower()
    camera.stats.follower = f
    for _ in range(WINDOW):
        f.update(r.next(resent=30, rtt_ms=230.0))  # the link narrowed
    snap = StatsWindow(camera).snapshot()
    assert snap["target_kbps"] == round(f.bitrate / 1e3, 1) < 2000
    assert snap["follow_link"]["target"] == 2_000_000


def test_over_a_narrow_srt_link_the_rate_comes_down(tmp_path):
    """1.5 Mbit/s into a link of 300 kbit/s: SRT's reports reach the follower, which lowers
    the rate; the same stream without it keeps its rate."""
    from edge_semvc.bench import loss
    from edge_semvc.bench.lossy_link import BurstLoss, Link

    require("srt")
    sets = ["encoder.tune=zerolatency", "encoder.rc=cbr", "encoder.bitrate=1500000",
            "encoder.follow_link.min_bitrate=200000"]
    cfg = loss.setting_config(None, sets, "follow", 30.0)
    sent = loss.send_srt("demo://astronaut", cfg, False, BurstLoss(0.0), 6.0, tmp_path, 500,
                         Link(capacity=((0.0, 300_000.0),)))
    follow = sent["follow"]
    assert sent["overflowed"] > 0 and follow["decreases"] >= 1
    assert follow["lowest"] < 1_500_000 * DECREASE and follow["target"] == 1_500_000


def test_a_receiver_that_vanishes_does_not_lower_the_rate(tmp_path):
    """The SRT receiver frozen mid-stream (SIGSTOP: no word, no acknowledgement; SRT gives the
    peer up after 5 s): the packets the sender gives up meanwhile lowered the rate before."""
    import os
    import signal
    import subprocess
    import threading

    from edge_semvc.bench.link import _paced, _wait_bound
    from edge_semvc.bench.lossy_link import port_pair
    from edge_semvc.pipeline import run_encode
    from edge_semvc.sinks import open_output
    from edge_semvc.sinks.gstreamer import gst_python

    require("srt")
    cfg = load_config(None, ["encoder.tune=zerolatency", "encoder.rc=cbr",
                             "encoder.bitrate=1500000", "encoder.follow_link.enabled=true"])
    port, got = port_pair(), tmp_path / "got.ts"
    script = os.path.join(os.path.dirname(__file__), "..", "edge_semvc", "bench", "gst_record.py")
    rx = subprocess.Popen([gst_python(), script, f"srt://127.0.0.1:{port}?mode=listener",
                           str(got)])
    frozen, stopped = threading.Event(), []

    def freeze_once_it_records():
        while not frozen.is_set():
            if got.exists() and got.stat().st_size > 100_000:
                os.kill(rx.pid, signal.SIGSTOP)
                stopped.append(got.stat().st_size)
                frozen.set()
            frozen.wait(0.05)

    try:
        _wait_bound(port)
        threading.Thread(target=freeze_once_it_records, daemon=True).start()
        stats = run_encode(_paced("demo://astronaut", 0.0), [open_output(
            f"srt://127.0.0.1:{port}")], cfg, semantic=False, max_frames=30 * 9)
    finally:
        frozen.set()
        rx.kill()
        rx.wait()
    assert stopped and stats["follow_link"]["decreases"] == 0, stats["follow_link"]


def test_one_of_two_viewers_that_vanishes_does_not_lower_the_rate(tmp_path):
    """An SRT listener with two callers, one frozen mid-stream (SIGSTOP): the other still
    acknowledges, so the sum of acknowledgements moved and the frozen one's packets given up
    lowered the rate of both (1500 -> 1083 kbit/s); the sender reports the silent peer, and
    counts on over the caller SRT gives up."""
    import os
    import signal
    import subprocess
    import threading

    from edge_semvc.bench.link import _paced, _wait_bound
    from edge_semvc.bench.lossy_link import port_pair
    from edge_semvc.pipeline import run_encode
    from edge_semvc.sinks import open_output
    from edge_semvc.sinks.gstreamer import gst_python

    require("srt")
    cfg = load_config(None, ["encoder.tune=zerolatency", "encoder.rc=cbr",
                             "encoder.bitrate=1500000", "encoder.follow_link.enabled=true"])
    port, got = port_pair(), [tmp_path / "frozen.ts", tmp_path / "watching.ts"]
    script = os.path.join(os.path.dirname(__file__), "..", "edge_semvc", "bench", "gst_record.py")
    viewers, done, stopped = [], threading.Event(), []

    def view_then_freeze_one():
        _wait_bound(port)
        viewers.extend(subprocess.Popen([gst_python(), script,
                                         f"srt://127.0.0.1:{port}?mode=caller", str(path)])
                       for path in got)
        while not done.is_set():
            if not stopped and got[0].exists() and got[0].stat().st_size > 100_000:
                os.kill(viewers[0].pid, signal.SIGSTOP)
                stopped.append(got[0].stat().st_size)
            done.wait(0.05)

    threading.Thread(target=view_then_freeze_one, daemon=True).start()
    try:
        stats = run_encode(_paced("demo://astronaut", 0.0), [open_output(
            f"srt://127.0.0.1:{port}?mode=listener")], cfg, semantic=False, max_frames=30 * 10)
    finally:
        done.set()
        for viewer in viewers:
            viewer.kill()
            viewer.wait()
    assert stopped and got[1].stat().st_size > 4 * stopped[0]
    assert stats["follow_link"]["decreases"] == 0, stats["follow_link"]


def test_a_follower_starts_at_the_rate_it_is_given_under_its_ceiling_and_goes_back_up():
    """serve: a camera's next run on the same link starts where the last one's follower was
    (`start`), between min_bitrate and the ceiling (a reload may have lowered it); a clean link
    takes it back up as ever."""
    cfg = FollowLinkConfig(True, 100_000)
    assert LinkFollower(cfg, TARGET, 700_000).stats() == {
        "bitrate": 700_000, "target": TARGET, "lowest": 700_000, "decreases": 0,
        "increases": 0, "reports": 0}
    assert LinkFollower(cfg, 500_000, 700_000).bitrate == 500_000  # the ceiling, lower
    assert LinkFollower(cfg, TARGET, 50_000).bitrate == 100_000  # min_bitrate, higher
    assert LinkFollower(cfg, TARGET, None).bitrate == TARGET
    f, r = LinkFollower(cfg, TARGET, 700_000), Reports()
    assert [f.update(r.next()) for _ in range(WINDOW)][-1] == round(700_000 * INCREASE)


def test_a_run_given_a_start_rate_opens_its_encoder_at_it(tmp_path):
    """`Live.follow_start` (serve: the rate the camera's last run reached on the same link):
    the follower and x264 start at it, no change counted; a real SRT listener output."""
    import socket

    from gst_helpers import free_port

    from edge_semvc.pipeline import Live, RunStats, run_encode
    from edge_semvc.sources import open_source

    require("srt")
    cfg = load_config(None, ["encoder.bitrate=2000000", "encoder.follow_link.enabled=true",
                             "labeler.cpu_budget=0.05"])
    out = f"srt://127.0.0.1:{free_port(socket.SOCK_DGRAM)}?mode=listener"
    stats = RunStats()
    result = run_encode(open_source("demo://astronaut"), [out], cfg, max_frames=5,
                        live=Live(stats=stats, follow_start=600_000))
    assert result["follow_link"]["bitrate"] == 600_000
    assert result["encoder"]["vbv_maxrate_kbps"] == 600
    assert stats.rate_changes == 0
