"""The encoder's configuration (`encoder:`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config_model import check
from . import AUTO, CPU_ENCODER, ENCODERS, known_encoders

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
class FollowLinkConfig:
    """`encoder.follow_link`: the bit rate follows what an SRT output or the RTSP server learns
    of its link (`follow.py`; README, "The rate follows an SRT or RTSP link by itself")."""

    enabled: bool = False  # lower the CBR target while an SRT/RTSP output's link cannot carry it
    min_bitrate: int = 100_000  # bits/s: it never goes below this

    def validate(self, e: "EncoderConfig") -> None:
        if not self.enabled:
            return
        check(e.profile == "live", "encoder.follow_link.enabled", self.enabled,
              "false with encoder.profile storage (a recording's rate is its CRF)")
        check(e.rate_control() == "cbr", "encoder.follow_link.enabled", self.enabled,
              f"false with encoder.rc {e.rate_control()} (it changes a CBR target: set "
              "encoder.bitrate)")
        check(e.backend == AUTO or "cbr" in LIVE_RATE.get(e.backend, ()),
              "encoder.follow_link.enabled", self.enabled,
              f"false with encoder.backend {e.backend} (its CBR target cannot change live)")
        check(1000 <= self.min_bitrate <= e.bitrate, "encoder.follow_link.min_bitrate",
              self.min_bitrate, f"1000-{e.bitrate} bits/s (at least encoder.bitrate's lowest, "
              "at most encoder.bitrate)")


@dataclass
class EncoderConfig:
    # the encoder: auto, x264 (GPL, behind the encoder interface), x265 (GPL), nvenc,
    # jetson-v4l2; auto: the Jetson hardware encoder where it runs with these settings, else x264
    # (README, "Platforms"); what a backend takes beyond these keys goes in `params` (README,
    # "Hardware encoders")
    backend: str = "auto"
    # live: every frame, keyframes every `keyint`; storage: recorded video, CRF (`bitrate` =
    # VBV cap) + the map + long GOP and dynamic frame rate (`storage`)
    profile: str = "live"
    # rate control: auto, crf, abr or cbr. auto follows what was given (`rate_control()`): a
    # bitrate alone is the target (cbr; the storage profile: crf capped by it), none is crf
    rc: str = "auto"
    crf: float = 23.0  # quality target with rc=crf (lower = better, more bytes)
    # bits/s; the target of abr/cbr (and of auto), the VBV cap of crf (0 = none). x264 and x265
    # take whole kbit/s: the nearest, a half up (1499 runs at 1 kbit/s, 2500 at 3), the same for
    # a remote change and follow_link's rates; NVENC and Jetson take bits/s as given
    bitrate: int = 0
    preset: str = "veryfast"  # x264 preset
    tune: str = ""  # x264 tune, e.g. zerolatency (no lookahead or B-frame delay)
    # frames between IDRs; 0: x264's default (250), or `lossy_keyint_s` where an output can
    # lose packets
    keyint: int = 0
    # with keyint 0 where an output can lose a packet for good (RTP, MPEG-TS over UDP, the
    # RTSP server's UDP clients, SRT past its latency): an IDR, or with intra refresh a refresh
    # period, every this many seconds of frames, so a lost packet shows at most about that long
    # and a receiver that joins waits no longer (README, "A link that loses packets"); 0:
    # x264's default there too
    lossy_keyint_s: float = 2.0
    # periodic intra refresh instead of IDR pictures (every backend has one): a steady rate
    # without I-frame bursts for a narrow link; keyint (0: as above) is then the refresh period
    intra_refresh: bool = False
    threads: int = 0  # 0 = auto
    # how much of x264's own adaptive quantisation stays on frames that carry a map (1: all;
    # 0: the map's complexity term alone masks texture); frames without a map keep all of it
    aq_with_map: float = 0.5
    # what a backend takes beyond these keys, checked at load by its `check_params`: x264's
    # and x265's own options (param_parse), nvenc's and jetson-v4l2's keys (README)
    params: dict[str, str] = field(default_factory=dict)
    storage: StorageConfig = field(default_factory=StorageConfig)
    follow_link: FollowLinkConfig = field(default_factory=FollowLinkConfig)

    def rate_control(self) -> str:
        """The rate control in use: `rc`, or with `auto` cbr when a bitrate is given (a live
        stream's target: the rate bounded over a 1 s buffer, which a link of that capacity
        carries without bursts, and which x264 retunes live), else crf. The storage profile is
        quality-targeted: crf, the bitrate its cap."""
        if self.rc != "auto":
            return self.rc
        return "cbr" if self.bitrate > 0 and self.profile != "storage" else "crf"

    def validate(self) -> None:
        names = [AUTO, *known_encoders()]
        check(self.backend in names, "encoder.backend", self.backend, " or ".join(names))
        if self.backend != AUTO:  # auto: the pre-flight checks them for the backend it picks
            ENCODERS.get(self.backend).check_params(self.params)
        check(self.profile in PROFILES, "encoder.profile", self.profile, " or ".join(PROFILES))
        check(self.profile != "storage" or self.backend != "jetson-v4l2", "encoder.profile",
              self.profile, "live with jetson-v4l2 (its hardware encoder has no CRF)")
        check(self.rc in ("auto", "crf", "abr", "cbr"), "encoder.rc", self.rc,
              "auto, crf, abr or cbr (x264 ignores the QP map in constant-QP mode)")
        rc = self.rate_control()
        check(self.profile != "storage" or rc == "crf", "encoder.rc", self.rc,
              "crf with encoder.profile storage (quality-targeted; encoder.bitrate caps it)")
        check(self.profile != "storage" or not self.keyint, "encoder.keyint", self.keyint,
              "0 with encoder.profile storage (its GOP is encoder.storage.gop_s)")
        self.storage.validate()
        check(0 <= self.crf <= 51, "encoder.crf", self.crf, "between 0 and 51")
        check(self.bitrate == 0 or 1000 <= self.bitrate <= 10**9, "encoder.bitrate",
              self.bitrate, "1000-1000000000 bits/s, or 0: none with crf (x264 counts whole "
              "kbit/s: below 1000 it would run at another rate than it says)")
        check(rc == "crf" or self.bitrate > 0, "encoder.bitrate", self.bitrate,
              f"a positive bitrate (rate control {rc!r} needs one)")
        check(self.keyint >= 0, "encoder.keyint", self.keyint, ">= 0")
        check(0 <= self.lossy_keyint_s <= 60, "encoder.lossy_keyint_s", self.lossy_keyint_s,
              "0-60 seconds (0: x264's default)")
        check(not (self.intra_refresh and self.profile == "storage"), "encoder.intra_refresh",
              self.intra_refresh, "false with encoder.profile storage (recordings seek to IDRs)")
        check(self.threads >= 0, "encoder.threads", self.threads, ">= 0")
        check(0.0 <= self.aq_with_map <= 1.0, "encoder.aq_with_map", self.aq_with_map,
              "between 0 and 1 (a share of x264's own adaptive quantisation)")
        self.follow_link.validate(self)


# The rate controls whose bit rate each backend changes while frames flow (its reconfigure):
# x264 keeps abr's rate; libx265 takes a change but its rate control ignores it.
LIVE_RATE = {"x264": ("cbr", "crf"), "nvenc": ("cbr", "crf", "abr"),
             "jetson-v4l2": ("cbr", "abr")}


def check_live_rate(old: EncoderConfig, new: EncoderConfig) -> None:
    """A rate change while frames flow (`encoder.bitrate`, `encoder.crf` over MQTT) is one the
    encoder can take without restarting: not on x265, the bit rate only where the backend
    changes it for the rate control in use (LIVE_RATE), and a crf cap neither added nor
    removed."""
    if (new.bitrate, new.crf) == (old.bitrate, old.crf):
        return
    key, value = (("encoder.bitrate", new.bitrate) if new.bitrate != old.bitrate
                  else ("encoder.crf", new.crf))
    backend = CPU_ENCODER if old.backend == AUTO else old.backend  # no pre-flight ran
    check(backend in LIVE_RATE, key, value,
          f"no live change with encoder.backend {backend} (libx265 takes the change but "
          "its rate control keeps the old rate; restart, or use x264)")
    check(new.crf == old.crf or old.rate_control() == "crf", "encoder.crf", new.crf,
          f"no live change with encoder.rc {old.rate_control()} (crf steers only a crf encode: "
          "change encoder.bitrate)")
    if new.bitrate == old.bitrate:
        return
    check(old.rate_control() in LIVE_RATE[backend], "encoder.bitrate", new.bitrate,
          f"no live change with encoder.rc {old.rate_control()} on {backend} (start with rc cbr to "
          "follow a link)")
    check(old.bitrate > 0 and new.bitrate > 0, "encoder.bitrate", new.bitrate,
          "a live change between positive rates (a cap set at the start cannot be added or "
          "removed live)")
