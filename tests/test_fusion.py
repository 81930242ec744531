"""Embodiment 5, fusion of additional data sources: the formula Q_D = Q + sum_k theta_k * D_k
(qp/fusion.py), the sources' per-macroblock terms and weights (analysis/fusion.py), and reading
audio and subtitles (sources/sidedata.py) from real and constructed files.

The shared clips carry no speech and no subtitles (the drone clip's AAC track is wind and
motor noise, the parking clip's track is digital silence), so the files with a tone burst,
a silent lead-in or a subtitle stream are made here with PyAV from the clips' own packets."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest

from edge_semvc.analysis import Analyser
from edge_semvc.analysis.fusion import (
    WORD_CLASSES,
    FusionAnalyser,
    FusionConfig,
    class_mask,
    words_to_classes,
)
from edge_semvc.config import Config, QpConfig
from edge_semvc.errors import ConfigError, ModelError, SourceError
from edge_semvc.frame import Frame
from edge_semvc.labeler import Labeler
from edge_semvc.qp.fusion import fuse_data_sources
from edge_semvc.qp.policy import base_q
from edge_semvc.qp.qpmap import importance_gain, importance_vector, pin_mean
from edge_semvc.sources import open_source
from edge_semvc.sources.sidedata import (
    RATE,
    Cue,
    CueTrack,
    SideData,
    VoiceActivity,
    decode_audio,
    embedded_cues,
    parse_srt,
    parse_webvtt,
    read_subtitle_file,
)
from edge_semvc.values import LabelMap

DRONE = "drone_karma_coast_854x480.mp4"
PARKING = "overhead_parking_cars_768x432.mp4"
ROAD = "road_traffic_signs_1080p.h264"
CARPHONE = "carphone_qcif_pristine.mp4"


# --- the formula -----------------------------------------------------------------------------

def test_formula_exact_numbers():
    q = np.array([[0.5, 0.2], [1.0, 0.0]], np.float32)
    d_audio = np.array([[-1.0, 0.0], [-0.5, 0.0]], np.float32)
    d_description = np.array([[-1.0, -1.0], [0.0, 0.0]], np.float32)
    out = fuse_data_sources(q, [(0.25, d_audio), (0.75, d_description)])
    # 0.5 - 0.25 - 0.75 | 0.2 - 0.75 | 1.0 - 0.125 | 0.0
    np.testing.assert_allclose(out, [[-0.5, -0.55], [0.875, 0.0]], atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(fuse_data_sources(q, []), q)  # no source: Q unchanged
    with pytest.raises(ValueError, match="sum to 1"):
        fuse_data_sources(q, [(0.5, d_audio)])
    with pytest.raises(ValueError, match="shape"):
        fuse_data_sources(q, [(1.0, np.zeros((3, 2), np.float32))])


# --- subtitle files --------------------------------------------------------------------------

SRT = ("\ufeff1\r\n00:00:01,000 --> 00:00:02,500\r\n<i>A man</i> parks\r\nthe car\r\n\r\n"
       "2\n00:00:02,000 --> 00:00:04,000\n{\\an8}Tom &amp; Jerry\n\n"
       "3\n01:00:00,5 --> 01:00:01,000\nlate\n")


def test_srt_parsing(tmp_path):
    path = tmp_path / "cues.srt"
    path.write_bytes(SRT.encode("utf-8"))
    cues = read_subtitle_file(path)
    assert [(c.start, c.end, c.text) for c in cues] == [
        (1.0, 2.5, "A man parks the car"), (2.0, 4.0, "Tom & Jerry"), (3600.005, 3601.0, "late")]
    track = CueTrack(cues)
    assert track.active(0.5) == []
    assert track.active(2.2) == ["A man parks the car", "Tom & Jerry"]  # overlapping cues
    assert track.active(2.5) == ["Tom & Jerry"]  # the end is exclusive


def test_malformed_srt_names_file_and_line(tmp_path):
    path = tmp_path / "broken.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nfine\n\n2\n00:00:03 --> 00:00:04\nbad\n")
    with pytest.raises(SourceError, match=r"broken\.srt, line 6: expected a timing line"):
        read_subtitle_file(path)
    path.write_text("1\n00:00:05,000 --> 00:00:02,000\nbackwards\n")
    with pytest.raises(SourceError, match=r"broken\.srt, line 2: the cue ends"):
        read_subtitle_file(path)
    path.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\n\xff\xfe caf\xe9\n")
    with pytest.raises(SourceError, match="not UTF-8"):
        read_subtitle_file(path)
    with pytest.raises(SourceError, match="not found"):
        read_subtitle_file(tmp_path / "missing.srt")
    with pytest.raises(SourceError, match="expected .srt or .vtt"):
        read_subtitle_file(tmp_path / "cues.txt")


VTT = """WEBVTT - a header text
Kind: captions

NOTE a comment
spanning lines

STYLE
::cue { color: yellow }

intro
00:01.000 --> 00:03.000 line:90% align:center
<v Roger>Watch the <b>trucks</b></v> &lt;now&gt;

00:00:02.500 --> 00:00:05.000
<c.red>Two people</c> <00:00:03.000>wave
"""


def test_webvtt_parsing(tmp_path):
    path = tmp_path / "cues.vtt"
    path.write_text(VTT)
    cues = read_subtitle_file(path)
    assert [(c.start, c.end, c.text) for c in cues] == [
        (1.0, 3.0, "Watch the trucks <now>"), (2.5, 5.0, "Two people wave")]


def test_malformed_webvtt_names_file_and_line(tmp_path):
    with pytest.raises(SourceError, match=r"x\.vtt, line 1: expected the header 'WEBVTT'"):
        parse_webvtt("00:01.000 --> 00:02.000\nhello\n", "x.vtt")
    text = "WEBVTT\n\n00:01.000 --> 00:02.000\nok\n\n\nid\n00:03,000 --> 00:04,000\ncomma\n"
    with pytest.raises(SourceError, match=r"x\.vtt, line 8: expected a timing line"):
        parse_webvtt(text, "x.vtt")
    assert parse_srt("") == [] and parse_webvtt("WEBVTT\n") == []


# --- the word -> class table -----------------------------------------------------------------

def test_word_table():
    assert words_to_classes("watch the vehicles at the gate") == {"vehicle"}
    assert words_to_classes("People and CARS!") == {"person", "vehicle"}
    assert words_to_classes("buses, lorries and a truck") == {"vehicle"}
    assert words_to_classes("two men, a woman, pedestrians") == {"person"}
    assert words_to_classes("faces") == {"face"}
    assert words_to_classes("read the signs and number plates") == {"text"}
    assert words_to_classes("the sea and the cliffs") == set()
    assert words_to_classes("the drones", {"drone": "vehicle"}) == {"vehicle"}
    # every entry names a class the labeler's class_map produces
    assert set(WORD_CLASSES.values()) == {"vehicle", "person", "face", "text"}


# --- the analyser ----------------------------------------------------------------------------

def toy_labels() -> LabelMap:
    """2x3 macroblocks: person, face, vehicle / text, background, background."""
    labels = np.array([[1, 2, 3], [4, 0, 0]], np.int16)
    probs = np.zeros((4, 2, 3), np.float32)
    return LabelMap(probs, ["background", "person", "face", "vehicle", "text"], labels)


def enabled(**changes) -> FusionConfig:
    cfg = FusionConfig(enabled=True, **changes)
    cfg.validate()
    return cfg


def test_audio_lowers_voice_regions_in_proportion_to_activity():
    fusion = FusionAnalyser(enabled())
    ((theta, d),) = fusion.analyse(toy_labels(), voice=0.5)
    assert theta == 1.0 and fusion.last_sources == ["audio"]
    np.testing.assert_array_equal(d, [[-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]])
    ((_, silent),) = fusion.analyse(toy_labels(), voice=0.0)
    assert not silent.any()  # silence is a statement: present, lowers nothing
    fusion.cfg = enabled(audio=False)
    assert fusion.analyse(toy_labels(), voice=1.0) == []


def test_subtitles_mark_text_and_named_classes_while_a_cue_is_active():
    fusion = FusionAnalyser(enabled(strength=2.0))
    ((_, d),) = fusion.analyse(toy_labels(), cues=["A man gets out of the car"])
    np.testing.assert_array_equal(d, [[-2.0, 0.0, -2.0], [-2.0, 0.0, 0.0]])
    ((_, d),) = fusion.analyse(toy_labels(), cues=["Hello there"])
    np.testing.assert_array_equal(d, [[0.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    ((theta, d),) = fusion.analyse(toy_labels(), cues=[])  # between cues
    assert theta == 1.0 and not d.any()
    assert fusion.analyse(toy_labels(), cues=None) == []  # no subtitle source


def test_weights_renormalised_over_present_sources():
    cfg = enabled(description="watch the vehicles",
                  weights={"audio": 1.0, "subtitles": 1.0, "description": 2.0})
    fusion = FusionAnalyser(cfg)
    data = fusion.analyse(toy_labels(), voice=1.0, cues=["faces"])
    assert fusion.last_sources == ["audio", "subtitles", "description"]
    assert [t for t, _ in data] == [0.25, 0.25, 0.5]
    q = np.full((2, 3), 0.5, np.float32)
    np.testing.assert_allclose(fuse_data_sources(q, data),
                               [[0.25, 0.0, 0.0], [0.25, 0.5, 0.5]], atol=1e-6)
    data = fusion.analyse(toy_labels(), voice=1.0)  # subtitles absent: 1/3, 2/3
    np.testing.assert_allclose([t for t, _ in data], [1 / 3, 2 / 3])
    fusion.cfg = enabled(description="the sea")  # names nothing: absent
    assert fusion.analyse(toy_labels()) == []
    fusion.cfg = enabled(description="PEOPLE")  # a live change is picked up
    ((_, d),) = fusion.analyse(toy_labels())
    np.testing.assert_array_equal(d, [[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    fusion.reset()
    assert fusion.last_sources == [] and fusion.description_classes() == {"person"}
    zero = FusionAnalyser(enabled(weights={"audio": 0.0}))
    assert zero.analyse(toy_labels(), voice=1.0) == []  # a zero weight: no contribution


def test_class_mask_ignores_classes_the_map_lacks():
    labels = toy_labels()
    np.testing.assert_array_equal(class_mask(labels, {"vehicle", "boat", "background"}),
                                  [[0, 0, 1], [0, 0, 0]])


@pytest.mark.parametrize("key, value", [
    ("subtitle_file", "cues.txt"), ("strength", -1.0), ("voice_window_s", 0.0),
    ("noise_percentile", 100.0), ("activity_span_db", 0.0), ("silence_db", 3.0),
    ("voice_classes", []), ("weights", {"video": 1.0}), ("weights", {"audio": -1.0}),
    ("words", {"Drone!": "vehicle"})])
def test_config_validation_names_the_key(key, value):
    cfg = FusionConfig(**{key: value})
    with pytest.raises(ConfigError, match=rf"fusion\.{key}"):
        cfg.validate()


def test_config_defaults_are_valid_and_off():
    cfg = FusionConfig()
    cfg.validate()
    assert not cfg.enabled


# --- audio -----------------------------------------------------------------------------------

def write_mkv(path, *, audio=None, srt=None, video_from=None, seconds=3.0):
    """An MKV made with PyAV: 16 kHz mono PCM `audio` (float, full scale 1.0), an SRT subtitle
    stream from the file `srt`, and the first `seconds` of `video_from`'s video packets (copied,
    not re-encoded). Every stream is added before the first packet is written."""
    out = av.open(str(path), "w")
    inputs, feeds = [], []
    try:
        if video_from is not None:
            src = av.open(str(video_from))
            inputs.append(src)
            video = src.streams.video[0]
            limit = seconds / video.time_base
            feeds.append((out.add_stream_from_template(video),
                          (p for p in src.demux(video) if p.dts is not None and p.pts <= limit)))
        if srt is not None:
            sub = av.open(str(srt))
            inputs.append(sub)
            subs = sub.streams.subtitles[0]
            feeds.append((out.add_stream_from_template(subs),
                          (p for p in sub.demux(subs) if p.dts is not None)))
        if audio is not None:
            stream = out.add_stream("pcm_s16le", rate=RATE, layout="mono")
            feeds.append((None, pcm_packets(stream, audio)))
        for stream, packets in feeds:
            for packet in packets:
                if stream is not None:
                    packet.stream = stream
                out.mux(packet)
    finally:
        out.close()
        for src in inputs:
            src.close()
    return str(path)


def pcm_packets(stream, audio):
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    for start in range(0, pcm.size, 1024):
        frame = av.AudioFrame.from_ndarray(pcm[None, start:start + 1024], format="s16",
                                           layout="mono")
        frame.rate, frame.pts = RATE, start
        yield from stream.encode(frame)
    yield from stream.encode(None)


def tone(seconds: float, hz: float, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_voice_activity_sees_a_speech_band_burst_after_silence(tmp_path):
    """1.5 s silence, 1 s of 1 kHz (speech band) at -23 dB, 1 s silence, 1 s of 6 kHz (out of
    the band) at the same level, 0.5 s silence."""
    quiet = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    audio = np.concatenate([quiet(1.5), tone(1.0, 1000), quiet(1.0), tone(1.0, 6000),
                            quiet(0.5)])
    voice = VoiceActivity.from_file(write_mkv(tmp_path / "burst.mkv", audio=audio))
    assert voice.floor_db == -70.0  # digital silence: the floor is silence_db
    assert voice.at(0.75) == 0.0
    assert voice.at(2.0) == pytest.approx(1.0)  # 47 dB above the floor: full activity
    assert voice.at(3.0) == 0.0
    assert voice.at(4.0) < 0.05  # a 6 kHz whistle is outside the speech band
    assert voice.at(60.0) is None  # past the track: the source is absent there


def test_voice_activity_of_the_real_track_is_higher_where_there_is_sound(tmp_path, clip):
    """The drone clip's own audio (wind and motors), after 2 s of silence."""
    samples, start = decode_audio(str(clip(DRONE)))
    assert start == pytest.approx(0.0, abs=0.05) and samples.size / RATE > 12.0
    audio = np.concatenate([np.zeros(2 * RATE, np.float32), samples[: 6 * RATE]])
    voice = VoiceActivity.from_file(write_mkv(tmp_path / "lead_in.mkv", audio=audio,
                                              video_from=clip(DRONE), seconds=8.0))
    silent = [voice.at(t) for t in np.arange(0.3, 1.8, 0.1)]
    sound = [voice.at(t) for t in np.arange(2.3, 7.8, 0.1)]
    assert max(silent) == 0.0 and min(sound) > 0.5


def test_real_tracks_normalised_against_their_own_floor(clip):
    drone = SideData.open(str(clip(DRONE)))
    assert drone.cues is None  # no subtitle stream
    values = [drone.at(t).voice for t in np.arange(0.0, 12.0, 1 / 30)]
    assert all(v is not None and 0.0 <= v <= 1.0 for v in values)
    # steady wind noise sits near its own floor: some activity, never the full scale
    assert drone.voice.floor_db > -30.0 and 0.05 < float(np.mean(values)) < 0.5
    parking = SideData.open(str(clip(PARKING)))  # a track of digital silence
    assert parking.voice.floor_db == -70.0 and parking.at(10.0).voice == 0.0
    assert SideData.open(str(clip(CARPHONE))).at(1.0).voice is None  # no audio track


# --- embedded subtitles and the whole chain on real frames -----------------------------------

def test_embedded_subtitles_and_audio_through_a_real_source(tmp_path, clip):
    srt = tmp_path / "cues.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:01,500\n<i>A man</i> in his car\n\n"
                   "2\n00:00:02,000 --> 00:00:02,800\nsigns\n")
    audio = np.concatenate([np.zeros(RATE, np.float32), tone(3.0, 700)])
    path = write_mkv(tmp_path / "talk.mkv", audio=audio, srt=srt, video_from=clip(CARPHONE))
    cues = embedded_cues(path)
    assert [(c.start, c.end, c.text) for c in cues] == [(0.5, 1.5, "A man in his car"),
                                                       (2.0, 2.8, "signs")]
    side = SideData.open(path)
    source = open_source(path)
    try:
        seen = {f.index: side.for_frame(f) for f in source.frames()}
    finally:
        source.close()
    # carphone: 29.97 fps
    assert seen[0].cues == [] and seen[0].voice == 0.0
    assert seen[20].cues == ["A man in his car"] and seen[20].voice == 0.0
    assert seen[30].voice == pytest.approx(0.5, abs=0.05)  # tone from 1.0 s: half the window
    assert seen[75].cues == ["signs"] and seen[75].voice == pytest.approx(1.0)
    assert seen[87].cues == []
    with pytest.raises(SourceError, match="line 2"):
        srt.write_text("1\nnot a time\n")
        SideData.open(path, subtitle_file=str(srt))


def default_labeler() -> Labeler:
    """The default models on every frame, in line (deterministic)."""
    cfg = Config()
    try:
        return Labeler(replace(cfg.labeler, cpu_budget=0), cfg.cache_dir(), log=lambda *_: None)
    except ModelError as e:
        pytest.skip(f"the default models are not prepared (`edge-semvc models prepare`): {e}")


def frames_of(path, indices):
    source = open_source(str(path))
    try:
        return [f for f in source.frames() if f.index in indices and f.index <= max(indices)]
    finally:
        source.close()


def q_and_offsets(frame, labels, cfg, data):
    """Base Q of the regions, Q_D, and the QP map of each, as the pipeline computes them."""
    stats = Analyser(cfg.analysis).analyse(frame, labels)
    q = base_q(stats.region_complexity, stats.region_change, cfg.qp)
    q_d = fuse_data_sources(q, data)
    weight = importance_vector(labels.classes, cfg.qp)[labels.labels]
    gain = importance_gain(weight, cfg.qp)

    def offsets(values):
        return pin_mean(cfg.qp.q_gain * values - gain * weight, cfg.qp.target_mean,
                        cfg.qp.offset_min, cfg.qp.offset_max)

    return q, q_d, offsets(q), offsets(q_d)


def test_description_lowers_q_on_vehicles_in_real_frames(clip, nanodet_tfjs):
    # Room below the clamp: with the default gain road's few distant cars already reach
    # offset_min (-12), where nothing can lower their offsets further.
    cfg = Config(qp=QpConfig(offset_min=-30.0))
    labeler = default_labeler()
    fusion = FusionAnalyser(enabled(description="watch the vehicles"))
    try:
        for frame in frames_of(clip(ROAD), {0, 20, 40}):
            labels = labeler.label(frame)
            vehicle = class_mask(labels, {"vehicle"}) > 0
            assert vehicle.sum() >= 4, f"frame {frame.index}: no cars found"
            q, q_d, before, after = q_and_offsets(frame, labels, cfg, fusion.analyse(labels))
            assert (q_d[vehicle] < q[vehicle]).all()
            np.testing.assert_array_equal(q_d[~vehicle], q[~vehicle])
            # in the QP map: the cars gain bits relative to the rest of the frame
            assert after[vehicle].mean() < before[vehicle].mean() - 1.0
            assert after[~vehicle].mean() >= before[~vehicle].mean()
    finally:
        labeler.close()


def test_voice_lowers_q_on_the_talking_face_in_real_frames(tmp_path, clip, nanodet_tfjs):
    """Carphone (a man talking in a car) with a speech-band tone from 1 s on: the face and
    person macroblocks get a lower Q once the 'voice' starts, the background does not move."""
    cfg = Config()
    path = write_mkv(tmp_path / "talk.mkv", video_from=clip(CARPHONE),
                     audio=np.concatenate([np.zeros(RATE, np.float32), tone(3.0, 500)]))
    side = SideData.open(path)
    labeler = default_labeler()
    fusion = FusionAnalyser(enabled())
    try:
        for frame in frames_of(path, {10, 60}):
            labels = labeler.label(frame)
            voice = side.for_frame(frame).voice
            speaking = class_mask(labels, {"person", "face"}) > 0
            assert speaking.sum() > 10
            q, q_d, _, _ = q_and_offsets(frame, labels, cfg, fusion.analyse(labels, voice=voice))
            if frame.index == 10:  # 0.33 s: silence
                assert voice == 0.0
                np.testing.assert_array_equal(q_d, q)
            else:  # 2 s: the tone
                assert voice == pytest.approx(1.0)
                np.testing.assert_allclose(q_d[speaking], q[speaking] - 1.0, atol=1e-6)
                np.testing.assert_array_equal(q_d[~speaking], q[~speaking])
    finally:
        labeler.close()


def test_frame_time_without_pts():
    side = SideData(None, CueTrack([Cue(1.0, 2.0, "car")]))
    plane = np.zeros((16, 16), np.uint8)
    frame = Frame(plane, plane[:8, :8], plane[:8, :8], None, Fraction(1, 25), 30)
    assert side.for_frame(frame) == (None, ["car"])
