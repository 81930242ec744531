"""Command-line options shared by `encode`, `field-bench`, `bench` and `serve`: argument types
that name the bad value, the encoder/config options, and how they become config overrides."""
from __future__ import annotations

import argparse
import math
import sys
from fractions import Fraction


def bounded(cast, minimum, *, strict: bool = False, what: str = "number",
            maximum: float = math.inf):
    """An argparse type: `cast(text)`, finite, >= `minimum` (> with `strict`) and <= `maximum`;
    the error names the bad value."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}") from None
        if not math.isfinite(value) or not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, "
                                             f"got {text!r}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text!r}")
        return value
    return parse


non_negative_int = bounded(int, 0, what="count (a whole number)", maximum=sys.maxsize)
pixels = bounded(int, 1, what="size in pixels (a whole number)")
MAX_BITRATE = 10**9  # bits/s: encoder.bitrate's bound (encoders/config.py)


def parse_bitrate(text: str) -> int:
    """'800k', '2M', '1.5M', '800000' -> bits/s (at least 1 bit/s, at most MAX_BITRATE)."""
    t = text.strip()
    scale = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"invalid bitrate {text!r} (e.g. 800k, 2M, 1500000)")
    if not 1 <= round(value) <= MAX_BITRATE:
        raise argparse.ArgumentTypeError(
            f"bitrate {text!r} is out of range: 1 to {MAX_BITRATE // 10**6}M bits/s")
    return round(value)


def parse_crf(text: str) -> float:
    """A CRF value: x264's range, 1-51 (below 1 x264 turns to lossless, which takes no QP
    map)."""
    try:
        crf = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid CRF {text!r}") from None
    if not 1 <= crf <= 51:
        raise argparse.ArgumentTypeError(f"CRF {text!r} is out of range: 1 to 51")
    return crf


def parse_rate(text: str) -> Fraction:
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"invalid frame rate {text!r} (e.g. 25, 30000/1001)") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"frame rate must be positive, got {text!r}")
    return rate


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """Configuration, encoder and raw-input options shared by `encode` and `field-bench`."""
    p.add_argument("--config", help="YAML configuration file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key (repeatable), e.g. qp.target_mean=1")
    p.add_argument("--bitrate", type=parse_bitrate,
                   help="bits/s, with k/M suffixes: alone, the target rate (rc cbr); with "
                        "--crf, the VBV cap of the CRF encode")
    p.add_argument("--rc", choices=["crf", "abr", "cbr"],
                   help="rate control (default: from --bitrate/--crf; README, Rate control)")
    p.add_argument("--crf", type=float, help="CRF value (implies rc crf)")
    p.add_argument("--profile", choices=["live", "storage"],
                   help="live: every frame, fixed keyframe interval; storage: recorded video, "
                        "CRF + long GOP and dynamic frame rate (README, Storage profile)")
    p.add_argument("--preset", help="x264 preset (default veryfast)")
    p.add_argument("--tune", help="x264 tune, e.g. zerolatency (no lookahead/B-frame delay)")
    p.add_argument("--no-map", action="store_true",
                   help="plain x264: no labeler, analysis or map (the baseline)")
    p.add_argument("--input-width", type=pixels, default=0, help="raw video width")
    p.add_argument("--input-height", type=pixels, default=0, help="raw video height")
    p.add_argument("--input-rate", type=parse_rate, default=Fraction(0), help="raw video fps")
    p.add_argument("--input-pix-fmt", default="", help="raw video pixel format (default: "
                   "nv12 for .nv12, rgb24 for .rgb, else yuv420p)")


def config_overrides(args) -> list[str]:
    """CLI flags become config overrides applied after --config and --set. The rate control
    follows from what was given (jetson-utils' convention): --crf means crf (a --bitrate beside
    it caps it), a --bitrate alone is the target (encoder.rc auto: cbr); --crf with --rc abr or
    cbr contradicts itself."""
    from .errors import ConfigError

    out = list(args.set)
    if args.crf is not None and args.rc in ("abr", "cbr"):
        raise ConfigError(f"--crf {args.crf:g} goes with --rc crf, not --rc {args.rc} (a "
                          "bitrate target); give one of them")
    if args.crf is not None and args.rc is None:
        out.append("encoder.rc=crf")
    for flag, key in (("bitrate", "encoder.bitrate"), ("rc", "encoder.rc"), ("crf", "encoder.crf"),
                      ("preset", "encoder.preset"), ("tune", "encoder.tune"),
                      ("profile", "encoder.profile")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out
