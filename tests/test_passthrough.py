"""The input's other streams pass through: real clips with AAC audio (the car park, the drone) and
the drone's GoPro GPMF telemetry, encoded by the real pipeline into real containers and streams,
read back with FFmpeg (PyAV). The compressed packets must come out byte for byte, in sync with the
video (start and end within one frame), cut where the video is cut; what an output cannot carry
is said on one line and in the statistics.
"""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest
from conftest import shared_file

from edge_semvc.config import load_config
from edge_semvc.pipeline import run_encode
from edge_semvc.sinks.base import Output, StreamInfo
from edge_semvc.sinks.segment_file import Segment, recover
from edge_semvc.sources import open_source
from edge_semvc.sources.paced import PacedSource, Pacing
from edge_semvc.tracks import Track, TrackPacket

ROOT = Path(__file__).resolve().parents[1]
DRONE = "drone_karma_coast_854x480.mp4"  # AAC + GoPro timecode, GPMF ("GoPro MET"), SOS
PARK = "overhead_parking_cars_768x432.mp4"  # AAC, 12.5 fps


def clip(name: str) -> Path:
    return shared_file("data", "video", name)


def excerpt(tmp_path: Path, name: str, seconds: float) -> Path:
    """The first `seconds` of a clip, its packets copied (no re-encode)."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    out = tmp_path / f"{Path(name).stem}.{seconds:g}s.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip(name)), "-t", str(seconds),
                    "-map", "0:v", "-map", "0:a", "-c", "copy", str(out)], check=True)
    return out


def encode(src: Path, out: Path, *args: str) -> tuple[dict, str]:
    """`edge-semvc encode` as a user runs it: (statistics, stderr)."""
    stats = out.with_suffix(".json")
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", str(src), str(out),
                        "--stats-json", str(stats), "--progress", "off", *args],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(stats.read_text()), r.stderr


def remux(src: Path, out: Path) -> Path:
    """The same packets in another container (its extension's)."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(src), "-c", "copy", str(out)],
                   check=True)
    return out


def packets(path: Path, kind: str) -> list[tuple[Fraction, bytes]]:
    """(dts in seconds, payload) of the first stream of `kind`, in file order; AAC without the
    ADTS header MPEG-TS frames it in (7 bytes, 9 with a CRC)."""
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        strip = _raw_aac if kind == "audio" else bytes
        return [(p.dts * p.time_base, strip(bytes(p))) for p in c.demux(streams[0]) if p.size]


def _raw_aac(data: bytes) -> bytes:
    if len(data) > 7 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:  # ADTS sync, layer 0
        return data[7 if data[1] & 1 else 9:]
    return data


def span(path: Path, kind: str) -> tuple[float, float]:
    """(start, end) in seconds of what decodes of the first `kind` stream: the first picture or
    sample to the end of the last one."""
    with av.open(str(path)) as c:
        s = c.streams.video[0] if kind == "video" else c.streams.audio[0]
        frames = list(c.decode(s))
    start = min(float(f.time) for f in frames)
    if kind == "video":
        step = 1 / float(s.average_rate or s.guessed_rate)
        return start, max(float(f.time) for f in frames) + step
    last = max(frames, key=lambda f: f.time)
    return start, float(last.time) + last.samples / last.sample_rate


def assert_in_sync(src: Path, out: Path, fps: float) -> None:
    """The output's audio starts as far from its video as the input's does, and ends with the
    video, each within one frame."""
    frame = 1 / fps
    (v0, v1), (a0, a1) = span(out, "video"), span(out, "audio")
    (iv0, _), (ia0, _) = span(src, "video"), span(src, "audio")
    assert abs((a0 - v0) - (ia0 - iv0)) <= frame, (a0, v0, ia0, iv0)
    assert abs(a1 - v1) <= frame, (a1, v1)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".ts"])
def test_audio_and_telemetry_pass_through_untouched_and_cut_with_the_video(tmp_path, ext):
    src = clip(DRONE)
    out = tmp_path / f"drone{ext}"
    stats, err = encode(src, out, "--frames", "60")
    assert stats["frames"] == 60
    audio = packets(out, "audio")
    assert audio and [d for _, d in audio] == [d for _, d in packets(src, "audio")][:len(audio)]
    assert_in_sync(src, out, 30000 / 1001)  # --frames 60 cut the audio there too
    streams = {s["stream"]: s for s in stats["passthrough"]["streams"]}
    assert streams[1]["packets"] == len(audio) and streams[1]["cut"] > 0
    # GoPro's timecode and SOS tracks have no codec FFmpeg knows: listed, never silently lost
    assert {s["stream"] for s in stats["passthrough"]["skipped"]} == {2, 4}
    assert "data stream #2 (none) is not passed through" in err
    gpmf = packets(out, "data")
    if ext == ".mkv":  # Matroska takes no GPMF: one line and the statistics say so
        assert not gpmf
        assert f"{out}: the input's data stream #3 (bin_data) is not passed through" in err
        assert "matroska" in streams[3]["not_carried_by"][str(out)]
    else:
        with av.open(str(src)) as c:
            whole = [bytes(p) for p in c.demux(c.streams[3]) if p.size]
        assert [d for _, d in gpmf] == whole[:len(gpmf)] and len(gpmf) == 2  # 1 s each
        assert not streams[3]["not_carried_by"]


@pytest.mark.parametrize("ext", [".ts", ".mkv"])
def test_the_sound_an_edit_list_hides_is_left_out(tmp_path, ext):
    """A cut made without re-encoding (`ffmpeg -ss 3 -c copy`) keeps the sound from the
    keyframe before the cut, hidden by its edit list: left out, it does not play a second
    before the first picture (MPEG-TS) nor push the picture a second late (Matroska)."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    src = tmp_path / "cut.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-ss", "3", "-i", str(clip(PARK)), "-t", "3",
                    "-c", "copy", str(src)], check=True)
    with av.open(str(src)) as c:
        assert any(p.is_discard for p in c.demux(c.streams.audio[0]))  # the edit list hides
    out = tmp_path / f"park{ext}"
    stats, _ = encode(src, out)
    assert_in_sync(src, out, 12.5)
    assert span(out, "video")[0] < 1 / 12.5
    # FFmpeg's AAC priming packet, hidden by the edit list of an MP4 it encodes, is kept: the
    # decoder needs it for the first sound shown
    aac = tmp_path / "aac.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip(PARK)), "-t", "2", "-c:v", "copy",
                    "-c:a", "aac", str(aac)], check=True)
    with av.open(str(aac)) as c:
        first = next(p for p in c.demux(c.streams.audio[0]) if p.size)
        assert first.is_discard
        first = _raw_aac(bytes(first))
    encode(aac, tmp_path / f"aac{ext}")
    assert packets(tmp_path / f"aac{ext}", "audio")[0][1] == first


def test_a_track_stored_after_its_video_is_read_on_to_the_frames_cut(tmp_path):
    """The drone's GPMF packet for 0-1 s is stored after that second's 30 pictures: with
    --frames 20 the file is read on to it, so it reaches the output (and nothing later)."""
    stats, _ = encode(clip(DRONE), tmp_path / "d.mp4", "--frames", "20")
    streams = {s["stream"]: s for s in stats["passthrough"]["streams"]}
    assert streams[3]["packets"] == 1 and len(packets(tmp_path / "d.mp4", "data")) == 1
    assert_in_sync(clip(DRONE), tmp_path / "d.mp4", 30000 / 1001)


def test_a_raw_h264_output_keeps_the_video_alone_and_says_so(tmp_path):
    src = excerpt(tmp_path, PARK, 2)
    out = tmp_path / "park.h264"
    stats, err = encode(src, out, "--no-map")
    assert f"{out}: the input's audio stream #1 (aac) is not passed through: a raw .h264" in err
    (audio,) = stats["passthrough"]["streams"]
    assert audio["packets"] == 0 and "raw .h264" in audio["not_carried_by"][str(out)]


def test_audio_mpeg_ts_has_no_stream_type_for_is_named_not_sent_as_private_data(tmp_path):
    """PCM in MPEG-TS: FFmpeg's muxer takes it as private data no player decodes; refused by
    name instead, and Matroska carries it. MP3 (decoded by `mp3float`) has one: carried."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    for audio in ("pcm_s16le", "libmp3lame"):
        src = tmp_path / f"{audio}.mkv"
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip(PARK)), "-t", "1", "-c:v",
                        "copy", "-c:a", audio, str(src)], check=True)
        stats, err = encode(src, tmp_path / "o.ts", "--no-map")
        assert ("MPEG-TS has no stream type for pcm_s16le" in err) == (audio == "pcm_s16le")
        with av.open(str(tmp_path / "o.ts")) as c:
            assert [s.type for s in c.streams] == (["video"] if audio == "pcm_s16le" else
                                                   ["video", "audio"])
    encode(tmp_path / "pcm_s16le.mkv", tmp_path / "o.mkv", "--no-map")
    with av.open(str(tmp_path / "o.mkv")) as c:
        assert [s.codec_context.name for s in c.streams.audio] == ["pcm_s16le"]


def test_frames_the_storage_profile_leaves_out_do_not_break_the_audio(tmp_path):
    src = clip(PARK)
    out = tmp_path / "lot.mp4"
    stats, _ = encode(src, out, "--no-map", "--profile", "storage")
    assert stats["storage"]["frames_skipped"] > 50
    audio = packets(out, "audio")
    assert [d for _, d in audio] == [d for _, d in packets(src, "audio")][:len(audio)]
    assert_in_sync(src, out, 12.5)
    # every packet of the car park's 30 s is there: no gap where frames were left out
    assert len(audio) >= len(packets(src, "audio")) - 1


def test_a_looped_input_continues_its_audio_across_passes(tmp_path):
    """As a service camera with `loop: true` reads it: each pass's audio shifted as its frames
    are, in order, with nothing doubled."""
    src = excerpt(tmp_path, PARK, 2)  # 25 frames, 94 AAC packets
    one = len(packets(src, "audio"))
    looped = PacedSource(open_source(str(src)), Pacing(realtime=False),
                         reopen=lambda: open_source(str(src)))
    out = tmp_path / "loop.ts"
    try:
        stats = run_encode(looped, str(out), load_config(), semantic=False, max_frames=75)
    finally:
        looped.close()
    (track,) = stats["passthrough"]["streams"]
    audio = packets(out, "audio")
    times = [t for t, _ in audio]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len(audio) == track["packets"] and 3 * one - 3 <= len(audio) <= 3 * one
    assert track["out_of_order"] <= 3  # a pass's audio reaching past its video's end
    (v0, v1), (a0, a1) = span(out, "video"), span(out, "audio")
    assert abs(v1 - v0 - 6.0) <= 0.08 and abs(a1 - v1) <= 0.08 and abs(a0 - v0) <= 0.08


def test_passthrough_can_be_turned_off(tmp_path):
    src = excerpt(tmp_path, PARK, 1)
    stats, err = encode(src, tmp_path / "video_only.mp4", "--no-map",
                        "--set", "streams.passthrough=[]")
    assert not packets(tmp_path / "video_only.mp4", "audio")
    assert stats["passthrough"]["skipped"][0]["reason"] == "streams.passthrough leaves out audio"
    assert "is not passed through: streams.passthrough leaves out audio" in err


def test_the_interleaver_releases_by_the_video_and_bounds_what_it_holds():
    """The rule itself, on values: before a video packet, audio up to one frame past its decode
    time; before a keyframe, up to its presentation time; a track running more than
    MAX_HELD_S ahead is let out; at the end, what starts after the video is cut."""
    from edge_semvc.encoders.base import Packet
    from edge_semvc.sinks.interleave import MAX_HELD_S, Interleaver
    from edge_semvc.tracks import TrackPacket

    tb = Fraction(1, 1000)
    audio = Track(1, "audio", "aac", tb)
    il = Interleaver(Fraction(1, 25), Fraction(25), (audio,))  # video ticks = frames
    at = lambda ms: TrackPacket(1, b"x", ms, ms, 20, tb)  # noqa: E731
    assert il.add([at(ms) for ms in range(0, 400, 20)]) == []  # no video yet: held
    released = il.video(Packet(b"", pts=2, dts=0, keyframe=False))
    assert [p.pts for p in released] == [0, 20]  # < dts 0 + one frame (40 ms)
    released = il.video(Packet(b"", pts=8, dts=1, keyframe=True))
    assert [p.pts for p in released] == list(range(40, 320, 20))  # < its pts, 320 ms
    far = il.add([at(400 + 1000 * (MAX_HELD_S + 1))])
    assert [p.pts for p in far] == [320, 340, 360, 380]  # let out: more than 10 s behind it
    assert il.finish() == [] and il.counts[1]["cut"] == 1  # after the video's end (360 ms)
    assert il.add([at(100)]) == [] and il.counts[1]["out_of_order"] == 1  # behind the last


class Recorded(Output):
    """An output that keeps what it is given, to write it elsewhere afterwards."""

    uri = "recorded"

    def open(self, info: StreamInfo) -> None:
        self.info, self.items = info, []

    def cannot_carry(self, track) -> None:
        return None

    def write(self, packet) -> None:
        self.items.append(packet)

    def write_track(self, packet) -> None:
        self.items.append(packet)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("fmt", ["ts", "mp4"])
@pytest.mark.parametrize("camera", ["mp4", "ts"])
def test_a_crashed_segment_is_recovered_with_its_audio(tmp_path, fmt, camera):
    """A segment whose writer died (its .part never finished) comes back with its audio. From
    an MPEG-TS camera (AAC in ADTS) an fMP4 segment failed at its first audio packet
    ('Malformed AAC bitstream': write_error 'Operation not permitted', every segment lost)."""
    src = excerpt(tmp_path, PARK, 3)
    src = remux(src, tmp_path / "camera.ts") if camera == "ts" else src
    source, rec = open_source(str(src)), Recorded()
    try:
        run_encode(source, [rec], load_config(), semantic=False)
    finally:
        source.close()
    final = tmp_path / f"20261204T000000Z.{fmt}"
    seg = Segment(final, fmt, rec.info, 0, rec.info.codec, rec.info.tracks)
    for item in rec.items:  # as the sink writes them, the video with its parameter sets
        if isinstance(item, TrackPacket):
            seg.write_track(item)
        else:
            seg.write(item, (rec.info.headers if item.keyframe else b"") + item.data)
    # killed here: no trailer; what the muxer flushed is on disk
    frames, _ = recover(seg.part)
    assert frames >= 25  # all but the last second at most (fMP4 fragments)
    audio = packets(final, "audio")
    assert [d for _, d in audio] == [d for _, d in packets(src, "audio")][:len(audio)]
    (v0, v1), (a0, a1) = span(final, "video"), span(final, "audio")
    # the muxers hold some audio back (a TS PES gathers ~0.17 s of AAC, an fMP4 fragment cuts
    # at the video): what was not on disk yet is lost with the writer, up to half a second
    assert abs(a0 - v0) <= 0.08 and a1 >= v1 - 0.5, (v0, v1, a0, a1)


def test_files_joined_end_to_end_keep_the_second_files_audio_in_step(tmp_path):
    """Two MPEG-TS recordings joined (`cat a.ts b.ts`), the second's sound starting 0.6 s
    before its first picture: both parts' frames and sound follow on, nothing left out, and
    the second part's sound keeps its offset to its pictures."""
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    one = remux(excerpt(tmp_path, PARK, 2), tmp_path / "one.ts")
    two = tmp_path / "two.ts"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-ss", "3", "-t", "2", "-i", str(clip(PARK)),
                    "-itsoffset", "0.6", "-ss", "3", "-t", "2", "-i", str(clip(PARK)),
                    "-map", "1:v", "-map", "0:a", "-c", "copy", str(two)], check=True)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(one.read_bytes() + two.read_bytes())
    out = tmp_path / "out.mkv"
    stats, err = encode(joined, out, "--no-map")
    (track,) = stats["passthrough"]["streams"]
    sent = len(packets(one, "audio")) + len(packets(two, "audio"))
    assert track["out_of_order"] == 0 and track["packets"] == sent - track["cut"] <= sent
    assert stats["repaired_pts"] == 0 and stats["retimed_packets"] > 0
    assert "goes back in time at" in err
    times = [t for t, _ in packets(out, "audio")]
    assert times == sorted(times)

    def lead(path, first_frame, first_packet):  # the part's sound before its first picture
        with av.open(str(path)) as c:
            pictures = sorted(float(f.time) for f in c.decode(video=0))
        return float(packets(path, "audio")[first_packet][0]) - pictures[first_frame]

    with av.open(str(one)) as c:
        frames_one = sum(1 for _ in c.decode(video=0))
    assert lead(two, 0, 0) == pytest.approx(-0.6, abs=0.01)
    assert lead(out, frames_one, len(packets(one, "audio"))) == pytest.approx(-0.6, abs=0.08)
