"""The encoder's configuration (`encoder:`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config_model import check


@dataclass
class EncoderConfig:
    backend: str = "x264"  # the encoder (GPL: behind the encoder interface)
    rc: str = "crf"  # rate control: crf, abr or cbr
    crf: float = 23.0  # quality target with rc=crf (lower = better, more bytes)
    bitrate: int = 0  # bits/s; required for abr/cbr, an optional VBV cap with crf (0 = none)
    preset: str = "veryfast"  # x264 preset
    tune: str = ""  # x264 tune, e.g. zerolatency (no lookahead or B-frame delay)
    keyint: int = 0  # 0 = x264's default
    threads: int = 0  # 0 = auto
    params: dict[str, str] = field(default_factory=dict)  # extra x264 options (param_parse)

    def validate(self) -> None:
        check(self.rc in ("crf", "abr", "cbr"), "encoder.rc", self.rc,
              "crf, abr or cbr (x264 ignores the QP map in constant-QP mode)")
        check(0 <= self.crf <= 51, "encoder.crf", self.crf, "between 0 and 51")
        check(self.bitrate >= 0, "encoder.bitrate", self.bitrate, ">= 0 bits/s")
        check(self.rc == "crf" or self.bitrate > 0, "encoder.bitrate", self.bitrate,
              f"a positive bitrate (rate control {self.rc!r} needs one)")
        check(self.keyint >= 0, "encoder.keyint", self.keyint, ">= 0")
        check(self.threads >= 0, "encoder.threads", self.threads, ">= 0")
