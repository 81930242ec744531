"""The encoder's configuration (`encoder:`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config_model import check

PROFILES = ("live", "storage")


@dataclass
class StorageConfig:
    """`encoder.storage`: what the storage profile adds to the map (README, "Storage profile")."""

    dynamic_gop: bool = True  # IDRs placed by the pipeline: every gop_s of time and at cuts
    gop_s: float = 10.0  # keyframe interval: bounds seeking and how long a lost packet shows
    dynamic_fps: bool = True  # frames with nothing new beyond sensor noise are not encoded
    min_fps: float = 1.0  # ... but at least this many frames a second are
    noise_factor: float = 2.5  # a block changed when its difference exceeds this x its noise
    noise_margin: float = 1.5  # ... plus this many luma levels (8-bit quantisation, dark scenes)

    def validate(self) -> None:
        check(self.gop_s > 0, "encoder.storage.gop_s", self.gop_s, "> 0 seconds")
        check(self.min_fps > 0, "encoder.storage.min_fps", self.min_fps,
              "> 0 frames a second (a gap must end: players and muxers need frames)")
        check(self.noise_factor >= 1.0, "encoder.storage.noise_factor", self.noise_factor,
              ">= 1")
        check(self.noise_margin >= 0.0, "encoder.storage.noise_margin", self.noise_margin,
              ">= 0 luma levels")


@dataclass
class EncoderConfig:
    # the encoder: x264 (GPL, behind the encoder interface), x265 (GPL), nvenc, jetson-v4l2;
    # what a backend takes beyond these keys goes in `params` (README, "Hardware encoders")
    backend: str = "x264"
    # live: every frame, keyframes every `keyint`; storage: recorded video, CRF (`bitrate` =
    # VBV cap) + the map + long GOP and dynamic frame rate (`storage`)
    profile: str = "live"
    rc: str = "crf"  # rate control: crf, abr or cbr
    crf: float = 23.0  # quality target with rc=crf (lower = better, more bytes)
    bitrate: int = 0  # bits/s; required for abr/cbr, an optional VBV cap with crf (0 = none)
    preset: str = "veryfast"  # x264 preset
    tune: str = ""  # x264 tune, e.g. zerolatency (no lookahead or B-frame delay)
    keyint: int = 0  # 0 = x264's default
    # periodic intra refresh instead of IDR pictures (x264/x265 intra-refresh): a steady rate
    # without I-frame bursts for a narrow link; keyint is then the refresh period
    intra_refresh: bool = False
    threads: int = 0  # 0 = auto
    params: dict[str, str] = field(default_factory=dict)  # extra x264 options (param_parse)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def validate(self) -> None:
        from . import known_encoders

        check(self.backend in known_encoders(), "encoder.backend", self.backend,
              " or ".join(known_encoders()))
        check(self.profile in PROFILES, "encoder.profile", self.profile, " or ".join(PROFILES))
        check(self.profile != "storage" or self.backend != "jetson-v4l2", "encoder.profile",
              self.profile, "live with jetson-v4l2 (its hardware encoder has no CRF)")
        check(self.profile != "storage" or self.rc == "crf", "encoder.rc", self.rc,
              "crf with encoder.profile storage (quality-targeted; encoder.bitrate caps it)")
        check(self.profile != "storage" or not self.keyint, "encoder.keyint", self.keyint,
              "0 with encoder.profile storage (its GOP is encoder.storage.gop_s)")
        self.storage.validate()
        check(self.rc in ("crf", "abr", "cbr"), "encoder.rc", self.rc,
              "crf, abr or cbr (x264 ignores the QP map in constant-QP mode)")
        check(0 <= self.crf <= 51, "encoder.crf", self.crf, "between 0 and 51")
        check(self.bitrate >= 0, "encoder.bitrate", self.bitrate, ">= 0 bits/s")
        check(self.rc == "crf" or self.bitrate > 0, "encoder.bitrate", self.bitrate,
              f"a positive bitrate (rate control {self.rc!r} needs one)")
        check(self.keyint >= 0, "encoder.keyint", self.keyint, ">= 0")
        check(not (self.intra_refresh and self.profile == "storage"), "encoder.intra_refresh",
              self.intra_refresh, "false with encoder.profile storage (recordings seek to IDRs)")
        check(not self.intra_refresh or self.backend in ("x264", "x265"),
              "encoder.intra_refresh", self.intra_refresh,
              f"false with encoder.backend {self.backend} (x264 and x265 have it)")
        check(self.threads >= 0, "encoder.threads", self.threads, ">= 0")


def check_live_rate(old: EncoderConfig, new: EncoderConfig) -> None:
    """A rate change while frames flow (`encoder.bitrate`, `encoder.crf` over MQTT) is one the
    encoder can take without restarting: the bit rate changes only where it was a target or a
    cap from the start (cbr, crf with a bitrate); x264 and x265 keep abr's rate and cannot
    add or remove a cap."""
    if new.bitrate == old.bitrate:
        return
    check(old.rc != "abr", "encoder.bitrate", new.bitrate,
          "no live change with encoder.rc abr (start with rc cbr to follow a link)")
    check(old.bitrate > 0 and new.bitrate > 0, "encoder.bitrate", new.bitrate,
          "a live change between positive rates (a cap set at the start cannot be added or "
          "removed live)")
    check(old.backend in ("x264", "x265", "nvenc", "jetson-v4l2"), "encoder.bitrate",
          new.bitrate, f"no live change with encoder.backend {old.backend}")
