"""Side data that comes with a video (METHOD embodiment 5, data-source acquisition): the input's
own audio track as a voice-activity value, and subtitles (a sidecar SRT or WebVTT file, or the
input's embedded subtitle stream) as the texts of the cues on screen.

This is the I/O half of the fusion embodiment: it opens its own PyAV container on the input
file (the video source keeps its own), reads the side streams once when opened, and answers
per frame with plain values — a float and a list of strings — that `analysis/fusion.py` turns
into per-macroblock terms.

Voice activity: the track is resampled to 16 kHz mono float and cut into 20 ms hops; each
hop's speech-band (300-3400 Hz) level in dB (mean square, full-scale sine = -3 dB) is measured
against the track's own noise floor (a low percentile of all hop levels, never below
`silence_db`) and mapped linearly to [0, 1]: the floor is 0, `span_db` above it is 1. A frame's
value is the mean over the hops within +-window/2 of its time. Any sound in the speech band
above the floor counts: it is an energy detector, not a speech classifier.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from ..errors import SourceError
from ..frame import Frame

RATE = 16000  # Hz: the speech band (up to 3.4 kHz) fits under its Nyquist limit
HOP = 320  # samples = 20 ms per level measurement
_FFT = 512
_BATCH = 4 * RATE  # samples measured together while a track is decoded
SPEECH_BAND_HZ = (300.0, 3400.0)
OPEN_CUE_S = 5.0  # an embedded cue without a duration lasts until the next one, at most this


class Cue(NamedTuple):
    start: float  # seconds on the input's timeline
    end: float
    text: str  # plain text: markup removed, lines joined by spaces


class SideValues(NamedTuple):
    """What the side data says at one time: None where that source is absent."""

    voice: float | None  # voice activity in [0, 1]; None: no audio track, or not at this time
    cues: list[str] | None  # texts of the active cues; None: no subtitles ([]: none active)


# ---------------------------------------------------------------------------------------------
# Subtitle files

_SRT_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*"
                       r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*$")
# WebVTT: hours optional, '.' before the milliseconds, cue settings may follow the end time.
_VTT_TIME = re.compile(r"^\s*(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})\s+-->\s+"
                       r"(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})(?:\s+.*)?$")
_TAGS = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # HTML-like tags (<i>, <v Bob>, <00:01.000>), {\an8}


def read_subtitle_file(path: str | Path) -> list[Cue]:
    """Cues of a sidecar subtitle file, sorted by start: `.srt` (SubRip) or `.vtt` (WebVTT).
    Raises SourceError naming the file (and the line, for a malformed cue)."""
    p = Path(path)
    kind = p.suffix.lower()
    if kind not in (".srt", ".vtt"):
        raise SourceError(f"subtitle file {path}: unknown kind {kind or '(no extension)'!r} "
                          "(expected .srt or .vtt)")
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is common in SRT files
    except FileNotFoundError:
        raise SourceError(f"subtitle file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"subtitle file {path} is not UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise SourceError(f"cannot read subtitle file {path}: {e.strerror}") from None
    parse = parse_srt if kind == ".srt" else parse_webvtt
    return sorted(parse(text, str(path)), key=lambda c: c.start)


def parse_srt(text: str, name: str = "<srt>") -> list[Cue]:
    """SubRip: blocks separated by blank lines; an optional number line, a timing line
    `HH:MM:SS,mmm --> HH:MM:SS,mmm`, then the text lines."""
    cues = []
    for first, lines in _blocks(text):
        at = 0
        if lines[0].strip().isdigit() and len(lines) > 1:
            at = 1  # the cue number: SubRip numbers them, nothing depends on it
        m = _SRT_TIME.match(lines[at])
        if not m:
            raise _malformed(name, first + at, lines[at],
                             "a timing line 'HH:MM:SS,mmm --> HH:MM:SS,mmm'")
        g = [int(x) for x in m.groups()]
        cues.append(_cue(name, first + at, _seconds(*g[:4]), _seconds(*g[4:]), lines[at + 1:]))
    return cues


def parse_webvtt(text: str, name: str = "<vtt>") -> list[Cue]:
    """WebVTT: a `WEBVTT` header, then blocks: NOTE, STYLE and REGION blocks are skipped; a
    cue is an optional identifier line, a timing line `[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm
    [settings]`, then the text lines."""
    blocks = _blocks(text)
    if not blocks or not re.match(r"WEBVTT(\s|$)", blocks[0][1][0]):
        line = blocks[0][1][0] if blocks else ""
        raise _malformed(name, blocks[0][0] if blocks else 1, line, "the header 'WEBVTT'")
    cues = []
    for first, lines in blocks[1:]:
        if re.match(r"(NOTE|STYLE|REGION)(\s|$)", lines[0]):
            continue
        at = 0 if "-->" in lines[0] else 1  # an identifier line may come first
        if at >= len(lines):
            raise _malformed(name, first, lines[0], "a cue timing line after the identifier")
        m = _VTT_TIME.match(lines[at])
        if not m:
            raise _malformed(name, first + at, lines[at],
                             "a timing line '[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm'")
        g = [int(x) if x else 0 for x in m.groups()]
        cues.append(_cue(name, first + at, _seconds(*g[:4]), _seconds(*g[4:]), lines[at + 1:]))
    return cues


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """(1-based number of the block's first line, its lines) for each blank-line separated
    block."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if not current:
                start = number
            current.append(line.rstrip())
        elif current:
            out.append((start, current))
            current = []
    if current:
        out.append((start, current))
    return out


def _seconds(h: int, m: int, s: int, ms: int) -> float:
    return h * 3600 + m * 60 + s + ms / 1000


def _cue(name: str, line: int, start: float, end: float, lines: list[str]) -> Cue:
    if end < start:
        raise SourceError(f"subtitle file {name}, line {line}: the cue ends ({end:.3f} s) "
                          f"before it starts ({start:.3f} s)")
    return Cue(start, end, plain_text(" ".join(lines)))


def _malformed(name: str, line: int, got: str, expected: str) -> SourceError:
    return SourceError(f"subtitle file {name}, line {line}: expected {expected}, "
                       f"got {got.strip()[:60]!r}")


def plain_text(markup: str) -> str:
    """Cue text without markup: tags, ASS override blocks and entities; ASS line breaks as
    spaces."""
    text = _TAGS.sub("", markup.replace("\\N", " ").replace("\\n", " "))
    return " ".join(html.unescape(text).split())


# ---------------------------------------------------------------------------------------------
# Embedded streams

def embedded_cues(path: str) -> list[Cue] | None:
    """Cues of the first subtitle stream in `path` (text subtitles: SubRip, ASS, WebVTT, mov_text;
    a bitmap cue counts with an empty text), or None when it has none."""
    container = _open(path)
    try:
        if not container.streams.subtitles:
            return None
        stream = container.streams.subtitles[0]
        starts, texts, ends = [], [], []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue  # the demuxer's end-of-stream packet
            start = float(packet.pts * packet.time_base)
            rects = packet.decode()
            if not rects:
                continue
            # ASS events carry no text in `.text`; their `.dialogue` is the event text.
            text = " ".join(plain_text(_rect_text(r)) for r in rects).strip()
            starts.append(start)
            texts.append(text)
            ends.append(start + float(packet.duration * packet.time_base)
                        if packet.duration else None)
    except av.error.FFmpegError as e:
        raise SourceError(f"reading the subtitles of {path} failed: {_reason(e)}") from None
    finally:
        container.close()
    order = np.argsort(starts, kind="stable")
    starts = [starts[i] for i in order]
    cues = []
    for k, i in enumerate(order):
        following = starts[k + 1] if k + 1 < len(starts) else np.inf
        end = ends[i] if ends[i] is not None else min(following, starts[k] + OPEN_CUE_S)
        cues.append(Cue(starts[k], end, texts[i]))
    return cues


def _rect_text(rect) -> str:
    for attr in ("dialogue", "text"):
        value = getattr(rect, attr, b"")
        if value:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return ""


class CueTrack:
    """Which cues are on screen at a time (cues may overlap)."""

    def __init__(self, cues: list[Cue]):
        self.cues = list(cues)
        self._starts = np.array([c.start for c in self.cues], np.float64)
        self._ends = np.array([c.end for c in self.cues], np.float64)

    def active(self, t: float) -> list[str]:
        on = np.flatnonzero((self._starts <= t) & (t < self._ends))
        return [self.cues[i].text for i in on]


# ---------------------------------------------------------------------------------------------
# Audio

@dataclass
class VoiceActivity:
    """Speech-band voice activity of one audio track, hop by hop (see the module docstring)."""

    times: np.ndarray  # float64[n]: centre of each 20 ms hop, seconds on the input's timeline
    activity: np.ndarray  # float32[n] in [0, 1]
    floor_db: float  # the noise floor the levels were measured against
    window_s: float = 0.4  # a frame's value: mean over the hops within +-window_s/2

    @classmethod
    def from_levels(cls, levels: np.ndarray, start: float = 0.0, *, window_s: float = 0.4,
                    noise_percentile: float = 10.0, span_db: float = 20.0,
                    silence_db: float = -70.0) -> "VoiceActivity":
        """From the speech-band level of each hop (`speech_band_db`), the first at `start`."""
        floor = float(np.percentile(levels, noise_percentile)) if levels.size else silence_db
        floor = max(floor, silence_db)  # digital silence is not a noise floor
        activity = np.clip((levels - floor) / span_db, 0.0, 1.0).astype(np.float32)
        times = start + (np.arange(levels.size) + 0.5) * (HOP / RATE)
        return cls(times, activity, floor, window_s)

    @classmethod
    def from_samples(cls, samples: np.ndarray, start: float = 0.0, **levels) -> "VoiceActivity":
        """From 16 kHz mono float samples (full scale = 1.0) starting at `start` seconds;
        keyword arguments as `from_levels`."""
        return cls.from_levels(speech_band_db(samples), start, **levels)

    @classmethod
    def from_file(cls, path: str, **levels) -> "VoiceActivity | None":
        """The first audio track of `path`, decoded whole as it is opened (only the hop levels
        are kept: 50 floats per second of audio), or None when the file has no audio track;
        keyword arguments as `from_levels`."""
        if not _has_audio(path):
            return None
        parts, start = [], None
        pending: list[np.ndarray] = []
        for chunk_start, chunk in _audio_chunks(path):
            start = chunk_start if start is None else start
            pending.append(chunk)
            if sum(c.size for c in pending) >= _BATCH:  # FFT a few seconds at a time
                samples = np.concatenate(pending)
                whole = samples.size - samples.size % HOP
                parts.append(speech_band_db(samples[:whole]))
                pending = [samples[whole:]]
        parts.append(speech_band_db(np.concatenate(pending) if pending else np.zeros(0)))
        hop_levels = np.concatenate(parts)
        return cls.from_levels(hop_levels, start or 0.0, **levels)

    def at(self, t: float) -> float | None:
        """Mean activity of the hops within +-window/2 of `t`; None outside the track."""
        half = self.window_s / 2
        lo, hi = np.searchsorted(self.times, (t - half, t + half), side="left")
        if hi <= lo:
            return None
        return float(self.activity[lo:hi].mean())


def speech_band_db(samples: np.ndarray) -> np.ndarray:
    """Level per 20 ms hop of the 300-3400 Hz band, in dB of mean square (a full-scale sine
    in the band reads -3 dB): Hann-windowed FFT, Parseval-normalised."""
    n = samples.size // HOP
    if n == 0:
        return np.zeros(0, np.float32)
    window = np.hanning(HOP).astype(np.float32)
    hops = samples[: n * HOP].reshape(n, HOP).astype(np.float32) * window
    power = np.abs(np.fft.rfft(hops, _FFT, axis=1)) ** 2
    freqs = np.fft.rfftfreq(_FFT, 1 / RATE)
    band = (freqs >= SPEECH_BAND_HZ[0]) & (freqs <= SPEECH_BAND_HZ[1])
    # Parseval: sum over both spectrum halves / (n_fft * sum(window^2)) = windowed mean square
    mean_square = 2 * power[:, band].sum(axis=1) / (_FFT * float((window ** 2).sum()))
    return (10 * np.log10(mean_square + 1e-12)).astype(np.float32)


def decode_audio(path: str) -> tuple[np.ndarray | None, float]:
    """(16 kHz mono float32 samples, start time in seconds) of the first audio track, or
    (None, 0) when there is none: the whole track in memory, for short clips and tests."""
    if not _has_audio(path):
        return None, 0.0
    chunks, start = [], None
    for chunk_start, chunk in _audio_chunks(path):
        start = chunk_start if start is None else start
        chunks.append(chunk)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), start or 0.0


def _audio_chunks(path: str):
    """(start of the track in seconds, float32 samples) per decoded piece of the first audio
    track, resampled to 16 kHz mono. The samples are taken as continuous from the first frame
    (AAC and PCM tracks are)."""
    container = _open(path)
    try:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        start = None
        for frame in container.decode(stream):
            if start is None and frame.pts is not None:
                start = float(frame.pts * frame.time_base)
            for out in resampler.resample(frame):
                yield start or 0.0, out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        for out in resampler.resample(None):
            yield start or 0.0, out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    except av.error.FFmpegError as e:
        raise SourceError(f"decoding the audio track of {path} failed: {_reason(e)} "
                          "(--set fusion.audio=false encodes without it)") from None
    finally:
        container.close()


def _has_audio(path: str) -> bool:
    container = _open(path)
    try:
        return bool(container.streams.audio)
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------
# Both, per frame

class SideData:
    """The side data of one input file, read once when opened; `at(t)` / `for_frame(frame)`
    answer per frame. `subtitle_file`: a sidecar .srt/.vtt (it replaces the embedded stream);
    "" uses the input's embedded subtitle stream when `subtitles` is on."""

    def __init__(self, voice: VoiceActivity | None, cues: CueTrack | None):
        self.voice = voice
        self.cues = cues

    @classmethod
    def open(cls, path: str, *, audio: bool = True, subtitles: bool = True,
             subtitle_file: str = "", window_s: float = 0.4,
             normalisation: tuple[float, float, float] = (10.0, 20.0, -70.0)) -> "SideData":
        """`normalisation`: the voice activity's (noise percentile, span in dB, silence in
        dBFS), as `VoiceActivity.from_levels` takes them."""
        percentile, span, silence = normalisation
        voice = VoiceActivity.from_file(path, window_s=window_s, noise_percentile=percentile,
                                        span_db=span, silence_db=silence) if audio else None
        cues = None
        if subtitles:
            found = read_subtitle_file(subtitle_file) if subtitle_file else embedded_cues(path)
            cues = CueTrack(found) if found is not None else None
        return cls(voice, cues)

    def at(self, t: float) -> SideValues:
        return SideValues(self.voice.at(t) if self.voice else None,
                          self.cues.active(t) if self.cues else None)

    def for_frame(self, frame: Frame) -> SideValues:
        """At the frame's presentation time (pts x time base; the index x time base when the
        frame has no pts)."""
        ticks = frame.pts if frame.pts is not None else frame.index
        return self.at(float(ticks * frame.time_base))


def _open(path: str):
    if not Path(path).is_file():
        raise SourceError(f"input file not found: {path} (side data needs a file)")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, ValueError) as e:
        raise SourceError(f"cannot open {path}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0]
