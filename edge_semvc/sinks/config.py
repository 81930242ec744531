"""The outputs' configuration: what they keep of the input's other streams (`streams:`, every
output) and the recording (`record:`, the service's `sinks/segments.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config_model import check
from ..tracks import KINDS


@dataclass
class StreamsConfig:
    # the kinds of the input's other streams copied untouched into every output that can carry
    # them (audio, subtitle, data); [] writes the video alone
    passthrough: list[str] = field(default_factory=lambda: list(KINDS))

    def validate(self) -> "StreamsConfig":
        wrong = [k for k in self.passthrough if k not in KINDS]
        check(not wrong, "streams.passthrough", self.passthrough,
              f"a list of {', '.join(KINDS)} (or [] for the video alone)")
        return self

FORMATS = {"ts": ".ts", "mp4": ".mp4"}  # record.format -> file extension


@dataclass
class RecordConfig:
    dir: str = ""  # segments go to <dir>/<camera>/
    segment_seconds: float = 60.0  # cut at the first keyframe once a segment is this long
    format: str = "ts"  # ts (MPEG-TS) or mp4 (fragmented MP4)
    max_age_hours: float = 0.0  # delete completed segments older than this (0 = keep)
    max_bytes: int = 0  # per camera: delete the oldest while the total exceeds this (0 = no cap)
    retry_frames: int = 25  # after a write error, first retry this many frames later (doubling)

    def validate(self) -> "RecordConfig":
        check(bool(str(self.dir).strip()), "record.dir", self.dir, "a folder to record into")
        check(0.5 <= self.segment_seconds <= 86400, "record.segment_seconds",
              self.segment_seconds, "seconds between 0.5 and 86400")
        check(self.format in FORMATS, "record.format", self.format, " or ".join(FORMATS))
        check(self.max_age_hours >= 0, "record.max_age_hours", self.max_age_hours,
              ">= 0 hours (0 = keep)")
        check(self.max_bytes >= 0, "record.max_bytes", self.max_bytes, ">= 0 bytes (0 = no cap)")
        check(self.retry_frames >= 1, "record.retry_frames", self.retry_frames, ">= 1 frame")
        return self

    @property
    def extension(self) -> str:
        return FORMATS[self.format]

    @property
    def max_age_s(self) -> float:
        return self.max_age_hours * 3600.0
