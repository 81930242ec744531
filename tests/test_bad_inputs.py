"""Bad inputs, generated from the shared clips at test time: truncated, corrupted, empty,
mislabelled and odd-sized files, and wrong options. Each run must end with an exit status in
{0, 2, 3} and no traceback, leave the input's bytes unchanged, and leave either no output or one
that decodes (with as many frames as the statistics say)."""
from __future__ import annotations

import hashlib
import json
import subprocess

import av
import numpy as np
import pytest
from conftest import VIDEO

from edge_semvc.cli import main

CLIPS = ["street_pedestrians_vtest_768x576.avi", "road_traffic_signs_1080p.h264",
         "carphone_qcif_pristine.mp4", "drone_karma_coast_854x480.mp4",
         "mobile_calendar_text_300x168.h264", "bikes_street_scene_cuts_640x272.mp4",
         "foreman_cif.h264", "overhead_parking_cars_768x432.mp4"]
CUTS = [0.0, 0.01, 0.1, 0.5, 0.9, 0.99]
DAMAGE = [0.1, 0.5, 0.9]
# whole encodes of every clip, close to a case the default run keeps (cut 0.99, damage 0.5):
# run with -m slow (CI's 20 minutes)
SLOW = {("cut", 0.9), ("damage", 0.1), ("damage", 0.9)}
# and every case of the largest clips (the containers and codecs are the smaller ones' too)
SLOW_CLIPS = {"road_traffic_signs_1080p.h264", "overhead_parking_cars_768x432.mp4",
              "drone_karma_coast_854x480.mp4"}


def _cases():
    for name in CLIPS:
        cases = [("cut", f) for f in CUTS] + [("damage", f) for f in DAMAGE] + \
            [("renamed", ".mkv" if not name.endswith(".mkv") else ".mp4")]
        for kind, arg in cases:
            slow = name in SLOW_CLIPS or (kind, arg) in SLOW
            yield pytest.param(name, kind, arg, id=f"{name}-{kind}{arg if kind != 'renamed' else ''}",
                               marks=[pytest.mark.slow] if slow else [])


def _clip(name):
    src = VIDEO / name
    if not src.exists():
        pytest.skip(f"{src} is missing (../shared beside the project holds the clips)")
    return src


def _first_packets(name, count, out):
    """The first `count` video packets of a shared clip, copied into `out` (its container)."""
    with av.open(str(_clip(name))) as i, av.open(str(out), "w") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for n, p in enumerate(i.demux(video=0)):
            if p.dts is None or n == count:
                break
            p.stream = s
            o.mux(p)
    return out


def _make(tmp_path, name, kind, arg):
    src = _clip(name)
    data = bytearray(src.read_bytes())
    suffix = src.suffix
    if kind == "cut":
        data = data[:int(len(data) * arg)]
    elif kind == "damage":  # 4 KB of noise in the middle of the stream
        pos = int(len(data) * arg)
        data[pos:pos + 4096] = np.random.default_rng(int(arg * 10)).bytes(len(data[pos:pos + 4096]))
    elif kind == "renamed":
        suffix = arg
    path = tmp_path / f"in{suffix}"
    path.write_bytes(bytes(data))
    return path


def test_a_directory_is_not_called_missing(tmp_path, capsys):
    code, err = _run(["encode", tmp_path, tmp_path / "o.mp4"], tmp_path, capsys)
    assert code == 2 and "is a directory" in err


def test_an_output_that_is_a_directory_or_read_only_is_named_so(tmp_path, capsys, tmpfs):
    code, err = _run(["encode", "demo://astronaut", tmp_path], tmp_path, capsys)
    assert code == 2 and "is a directory: name a file in it" in err
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code, err = _run(["encode", "demo://astronaut", tmpfs / "o.mp4"], tmp_path, capsys)
    assert code == 2 and "is on a read-only file system" in err


def test_a_fifo_is_read_like_a_file(tmp_path, capsys):
    """A named pipe (another program writing the video) is read as it comes."""
    import os
    import threading

    fifo = tmp_path / "in.y4m"
    os.mkfifo(fifo)
    frame = bytes(176 * 144) + bytes([128]) * (2 * 88 * 72)

    def feed():
        with open(fifo, "wb") as f:
            f.write(b"YUV4MPEG2 W176 H144 F25:1 Ip A1:1 C420jpeg\n")
            for _ in range(5):
                f.write(b"FRAME\n" + frame)

    t = threading.Thread(target=feed)
    t.start()
    out = tmp_path / "o.mp4"
    code, err = _run(["encode", fifo, out, "--no-map"], tmp_path, capsys)
    t.join()
    assert code == 0, err
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 5


def _run(args, tmp_path, capsys):
    """main() in this process: an uncaught exception is the traceback a user would see."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code in (0, 2, 3), (code, err)
    assert "Traceback" not in err
    return code, err


def _check_output(out, stats_path, code):
    if not out.exists():
        assert code != 0
        return
    with av.open(str(out)) as c:
        n = sum(1 for _ in c.decode(video=0))
    s = json.loads(stats_path.read_text())
    assert n == s["frames"] and s["complete"] is (code == 0)


@pytest.mark.parametrize("name, kind, arg", list(_cases()))
def test_damaged_inputs(tmp_path, capsys, name, kind, arg):
    path = _make(tmp_path, name, kind, arg)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    code, _ = _run(["encode", path, out, "--no-map", "--stats-json", stats, "--progress", "off"],
                   tmp_path, capsys)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    _check_output(out, stats, code)


def _odd_inputs(tmp_path):
    yuv = tmp_path / "in.yuv"
    yuv.write_bytes(np.full(176 * 144 * 3 // 2 * 3 + 100, 128, np.uint8).tobytes())
    y4m_odd = tmp_path / "odd.y4m"
    y4m_odd.write_bytes(b"YUV4MPEG2 W175 H144 F30:1 Ip A1:1 C420jpeg\nFRAME\n"
                        + bytes(175 * 144 + 2 * 88 * 72))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    return {"raw": yuv, "odd": y4m_odd, "empty": empty, "text": text}


ODD = [
    (["{raw}", "--input-width", "176", "--input-height", "144", "--input-rate", "30"], 3),
    (["{raw}"], 2),  # raw without its geometry
    (["{raw}", "--input-width", "175", "--input-height", "144", "--input-rate", "30"], 2),
    (["{raw}", "--input-width", "176", "--input-height", "144", "--input-rate", "1e9"], 2),
    (["{odd}"], 2), (["{empty}"], 2), (["{text}"], 2), (["{tmp}"], 2),
    (["{tmp}/missing.mp4"], 2), (["rtsp://example.invalid/x"], 2),
]
OPTIONS = [
    ["--bitrate", "fast"], ["--bitrate", "-5"], ["--rc", "cqp"], ["--rc", "cbr"],
    ["--crf", "99"], ["--preset", "warp"], ["--tune", "nonsense"], ["--frames", "-1"],
    ["--frames", "x"], ["--set", "qp.bogus=1"], ["--set", "labeler.threshold=2"],
    ["--set", "encoder.params={{profile: nonsense}}"], ["--set", "labeler.models=[nope]"],
    ["--qp-map-png", "{tmp}/m.xyz"], ["--qp-map-video", "{tmp}/m.avi"],
    ["--stats-json", "{tmp}/no/such/dir/s.json"], ["--stats-json", "{out}"],
    ["--config", "{tmp}/missing.yaml"], ["--input-rate", "abc"], ["--bogus"],
]


@pytest.mark.parametrize("args, expected", ODD, ids=[f"odd{i}" for i in range(len(ODD))])
def test_odd_inputs(tmp_path, capsys, args, expected):
    files = {k: str(v) for k, v in _odd_inputs(tmp_path).items()}
    out = tmp_path / "out.mp4"
    argv = ["encode", *[a.format(tmp=tmp_path, **files) for a in args[:1]], out, *args[1:],
            "--no-map", "--stats-json", tmp_path / "s.json"]
    code, err = _run(argv, tmp_path, capsys)
    assert code == expected, err
    _check_output(out, tmp_path / "s.json", code)


@pytest.mark.parametrize("option", OPTIONS, ids=[f"opt{i}" for i in range(len(OPTIONS))])
def test_wrong_options(tmp_path, capsys, option):
    out = tmp_path / "out.mp4"
    argv = ["encode", VIDEO / CLIPS[2], out,
            *[o.format(tmp=tmp_path, out=out) for o in option], "--frames", "5"]
    if not (VIDEO / CLIPS[2]).exists():
        pytest.skip("shared clips missing")
    try:
        code, err = _run(argv, tmp_path, capsys)
    except SystemExit as e:  # argparse's own usage errors exit 2 with a message
        assert e.code == 2
        assert "Traceback" not in capsys.readouterr().err
        return
    assert code == 2, err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".ts"])
def test_timestamps_that_go_back_are_repaired(tmp_path, capsys, caplog, suffix):
    """Two MPEG-TS files joined end to end (the second's clock starts again): every frame is
    encoded with rising timestamps (a muxer refuses others), the second part following on from
    the first's last picture, counted."""
    part = _first_packets("carphone_qcif_pristine.mp4", 30, tmp_path / "part.ts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() * 2)
    out, stats = tmp_path / f"out{suffix}", tmp_path / "s.json"
    code, err = _run(["encode", joined, out, "--no-map", "--stats-json", stats, "--progress",
                      "off"], tmp_path, capsys)
    assert code == 0, err
    s = json.loads(stats.read_text())
    assert s["frames"] == 60 and s["retimed_packets"] == 30 and s["repaired_pts"] == 0
    assert "goes back in time at" in caplog.text
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 60


def test_a_jump_of_hours_an_mp4_cannot_store_is_said_not_a_traceback(tmp_path, capsys):
    """Recordings of one camera joined end to end, the second 7 h later: the MP4 muxer cannot
    store the step (less than 2^31 ticks of 1/90000 between frames) and refused the packet
    with "Not yet implemented in FFmpeg, patches welcome", a traceback (exit 1). It is said as
    the output failing (exit 3), and the .mkv beside it takes every frame."""
    part = _first_packets("carphone_qcif_pristine.mp4", 30, tmp_path / "part.ts")
    later = tmp_path / "later.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(part), "-c", "copy",
                    "-output_ts_offset", "25000", str(later)], check=True)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() + later.read_bytes())
    mp4, mkv = tmp_path / "out.mp4", tmp_path / "out.mkv"
    code, err = _run(["encode", joined, mp4, mkv, "--no-map", "--progress", "off"], tmp_path,
                     capsys)
    assert code == 3 and f"writing {mp4} failed: the muxer refused a packet" in err, err
    assert "does the input's time jump by hours? .mkv and .ts keep it" in err
    with av.open(str(mkv)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 60


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_disk_that_fills_is_said_with_what_it_leaves(tmp_path, capsys, caplog, tmpfs,
                                                       suffix):
    """A real 3 MB disk fills: exit 3, the statistics elsewhere; an MP4 whose index did not fit
    is said not to play, a Matroska file keeps what reached the disk."""
    src = _clip("drone_karma_coast_854x480.mp4")
    out, stats = tmpfs / f"out{suffix}", tmp_path / "s.json"
    code, err = _run(["encode", src, out, "--no-map", "--crf", "10", "--frames", "300",
                      "--stats-json", stats, "--progress", "off"], tmp_path, capsys)
    assert code == 3 and "No space left on device" in err
    assert json.loads(stats.read_text())["complete"] is False
    assert ("does not play" in caplog.text) == (suffix == ".mp4"), caplog.text
    if suffix == ".mkv":  # said once: by the run's error line, not also by the output's
        assert (caplog.text + err).count("No space left on device") == 1, caplog.text + err
        with av.open(str(out)) as c:
            assert sum(1 for _ in c.decode(video=0)) > 0


def test_a_full_disk_under_one_file_leaves_the_other_outputs_going(tmp_path, capsys, caplog,
                                                                   tmpfs):
    """The recording beside a live stream fills its disk: the file on the other disk gets
    every frame, the run still exits 3 with the failed output named in its statistics."""
    src = _clip("drone_karma_coast_854x480.mp4")
    full, whole, stats = tmpfs / "full.mp4", tmp_path / "whole.mkv", tmp_path / "s.json"
    code, err = _run(["encode", src, full, whole, "--no-map", "--crf", "10", "--frames", "300",
                      "--stats-json", stats, "--progress", "off"], tmp_path, capsys)
    assert code == 3 and "No space left on device" in err
    assert f"the run goes on for {whole}" in caplog.text and "does not play" in caplog.text
    s = json.loads(stats.read_text())
    assert s["complete"] is False and s["frames"] == 300
    assert [o["state"] for o in s["outputs"]] == ["failed", "closed"]
    assert s["outputs"][1]["packets"] == 300
    with av.open(str(whole)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 300


def test_an_mpeg_ts_file_cut_inside_a_packet_is_not_called_complete(tmp_path, capsys):
    """An MPEG-TS declares no end, but a whole file is whole 188-byte packets: one cut at any
    other byte (a recorder that died) is told (exit 3); the frames before the cut are kept."""
    whole = _first_packets("bikes_street_scene_cuts_640x272.mp4", 100, tmp_path / "whole.ts")
    cut = tmp_path / "cut.ts"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 3 // 10 // 188 * 188 + 100])
    code, _ = _run(["encode", whole, tmp_path / "a.mp4", "--no-map"], tmp_path, capsys)
    assert code == 0
    code, err = _run(["encode", cut, tmp_path / "b.mp4", "--no-map"], tmp_path, capsys)
    assert code == 3 and "ends in a partial transport packet" in err
    with av.open(str(tmp_path / "b.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) > 10


def test_a_matroska_file_cut_short_is_not_called_complete(tmp_path, capsys):
    """Matroska declares no frame count: the video's end its header declares tells a cut file
    (exit 3, as for MP4) from a whole one (exit 0)."""
    whole = _first_packets("bikes_street_scene_cuts_640x272.mp4", 100, tmp_path / "whole.mkv")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 3 // 10])
    code, _ = _run(["encode", whole, tmp_path / "a.mp4", "--no-map"], tmp_path, capsys)
    assert code == 0
    code, err = _run(["encode", cut, tmp_path / "b.mp4", "--no-map"], tmp_path, capsys)
    assert code == 3 and "ends early: its video ended at" in err


def _cut_without_reencoding(tmp_path, start):
    """The car park from `start` s, as `ffmpeg -ss START -c copy` cuts it: from the keyframe
    before, with an edit list that hides the pictures (and sound) before `start`."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    out = tmp_path / "cut.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-ss", str(start), "-i",
                    str(_clip("overhead_parking_cars_768x432.mp4")), "-t", "3", "-c", "copy",
                    str(out)], check=True)
    return out


def test_a_cut_made_without_re_encoding_is_whole(tmp_path, capsys):
    """The pictures an MP4's edit list hides count in its frame count but are never shown: a
    file cut that way is complete (exit 0, every shown picture), not 'truncated' (exit 3)."""
    src = _cut_without_reencoding(tmp_path, 3)
    with av.open(str(src)) as c:
        declared = c.streams.video[0].frames
        shown = sum(1 for _ in c.decode(video=0))
    assert shown < declared  # the edit list hides some
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    code, err = _run(["encode", src, out, "--no-map", "--stats-json", stats, "--progress",
                      "off"], tmp_path, capsys)
    assert code == 0, err
    s = json.loads(stats.read_text())
    assert s["frames"] == shown and s["complete"] is True
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == shown


def test_a_fragmented_mp4_cut_short_is_not_called_complete(tmp_path, capsys):
    """A fragmented MP4 (a recorder's, a camera's) declares no frame count, but its track's
    duration: one cut inside its fragments (the recorder died) is told (exit 3), a whole one
    is not."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    whole = tmp_path / "whole.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i",
                    str(_clip("overhead_parking_cars_768x432.mp4")), "-t", "6", "-c", "copy",
                    "-movflags", "+frag_keyframe+empty_moov", str(whole)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 6 // 10])
    code, err = _run(["encode", whole, tmp_path / "a.mkv", "--no-map"], tmp_path, capsys)
    assert code == 0, err
    code, err = _run(["encode", cut, tmp_path / "b.mkv", "--no-map"], tmp_path, capsys)
    assert code == 3 and "ends early: its video ended at" in err
    with av.open(str(tmp_path / "b.mkv")) as c:
        assert sum(1 for _ in c.decode(video=0)) > 10


def test_a_picture_damaged_in_the_middle_is_counted_and_said(tmp_path, capsys, caplog):
    """A packet whose bytes are garbled decodes with its missing parts concealed (FFmpeg flags
    the picture corrupt): it is encoded as it came, but said and counted (`concealed_frames`),
    where before the run said nothing of it."""
    src, damaged = _clip("carphone_qcif_pristine.mp4"), tmp_path / "damaged.mp4"
    with av.open(str(src)) as i, av.open(str(damaged), "w") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for n, p in enumerate(i.demux(video=0)):
            if p.dts is None or n == 40:
                break
            if n == 15:  # its slice data garbled, its NAL headers kept
                data = bytearray(bytes(p))
                data[40:] = bytes(b ^ 0x5A for b in data[40:])
                q = av.Packet(bytes(data))
                q.pts, q.dts, q.time_base, q.is_keyframe = p.pts, p.dts, p.time_base, p.is_keyframe
                p = q
            p.stream = s
            o.mux(p)
    stats = tmp_path / "s.json"
    code, err = _run(["encode", damaged, tmp_path / "o.mp4", "--no-map", "--stats-json", stats],
                     tmp_path, capsys)
    s = json.loads(stats.read_text())
    assert code == 0 and s["frames"] == 40 and s["concealed_frames"] >= 1, (code, err)
    assert "is damaged: decoded with its missing parts concealed" in caplog.text


@pytest.mark.parametrize("name, said", [
    ("empty.mp4", "empty.mp4 is empty (0 bytes)"),
    ("img%03d.png", "image sequences are not read: make a video of them first"),
])
def test_an_empty_file_and_an_image_sequence_are_named_so(tmp_path, capsys, name, said):
    if name == "empty.mp4":
        (tmp_path / name).write_bytes(b"")
    code, err = _run(["encode", tmp_path / name, tmp_path / "o.mp4"], tmp_path, capsys)
    assert code == 2 and said in err, err


def test_an_mpeg_ts_that_lost_transport_packets_is_counted_and_said(tmp_path, capsys, caplog):
    """An MPEG-TS recorded from a network that lost 20 of its 188-byte packets in the middle:
    FFmpeg's demuxer flags the video packet they belonged to corrupt and pictures come out
    merged or lost (60 in, 58 out); the run said nothing of it (no warning,
    concealed_frames 0, damaged_packets 0). It is counted (`corrupt_packets`) and said."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    for name, frames in (("whole.ts", 60), ("ok.ts", 10)):
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(_clip("foreman_cif.h264")),
                        "-frames:v", str(frames), "-c", "copy", str(tmp_path / name)], check=True)
    ts = (tmp_path / "whole.ts").read_bytes()
    half = len(ts) // 188 // 2 * 188
    lossy = tmp_path / "lossy.ts"
    lossy.write_bytes(ts[:half] + ts[half + 20 * 188:])
    stats = tmp_path / "s.json"
    code, err = _run(["encode", lossy, tmp_path / "o.mkv", "--no-map", "--stats-json", stats],
                     tmp_path, capsys)
    s = json.loads(stats.read_text())
    assert code == 0 and s["corrupt_packets"] >= 1, (code, err, s["frames"])
    assert "came with parts missing (lost in transport?)" in caplog.text
    code, err = _run(["encode", tmp_path / "ok.ts",
                      tmp_path / "p.mkv", "--no-map", "--stats-json", stats], tmp_path, capsys)
    assert code == 0 and json.loads(stats.read_text())["corrupt_packets"] == 0
