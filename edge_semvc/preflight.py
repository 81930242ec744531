"""Pre-flight: the backends a run gets, chosen once before it starts and reported.

`labeler.runtime` and `encoder.backend` default to `auto`. On a Jetson (`platform.py`) `auto`
means the TensorRT runtime when TensorRT runs here and every configured model has an engine built
on this machine (`edge-semvc engines build`), and the Jetson V4L2 hardware encoder when it runs
here and the encoder settings suit it (it has no CRF and no storage profile; the Orin Nano has
no hardware encoder at all). Anything missing gives the CPU path (ONNX Runtime, x264), with the
reason in the report. Elsewhere `auto` is the CPU path. A name other than `auto` is kept as it
is: the backend then says itself whether it can run.

The commands call `resolve` after loading the configuration and preparing the models; the
configuration's own validation never probes hardware.
"""
from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction

from .config import Config
from .encoders import AUTO, CPU_ENCODER
from .errors import EdgeSemvcError
from .labeler.runtime import CPU_RUNTIME
from .platform import Platform, detect

log = logging.getLogger("edge_semvc")


@dataclasses.dataclass
class Choices:
    platform: Platform
    report: list[str]  # one line per decision, as logged


def resolve(cfg: Config, platform: Platform | None = None) -> Choices:
    """Replace `auto` in `cfg.labeler.runtime` and `cfg.encoder.backend` (in place) by the
    backend this machine runs, and say why (logged: at INFO on a Jetson, DEBUG elsewhere)."""
    plat = platform or detect()
    report = [f"platform: {plat.describe()}"]
    if cfg.labeler.runtime == AUTO:
        cfg.labeler.runtime, why = _runtime(cfg, plat)
        report.append(f"labeler.runtime: {cfg.labeler.runtime} ({why})")
    if cfg.encoder.backend == AUTO:
        cfg.encoder.backend, why = _encoder(cfg, plat)
        report.append(f"encoder.backend: {cfg.encoder.backend} ({why})")
    for line in report:
        log.log(logging.INFO if plat.jetson else logging.DEBUG, "%s", line)
    return Choices(plat, report)


def _runtime(cfg: Config, plat: Platform) -> tuple[str, str]:
    if not plat.jetson:
        return CPU_RUNTIME, "not a Jetson: the CPU path"
    from .labeler.registry import describe, prepared_file
    from .labeler.runtime import available
    from .labeler.tensorrt import find_engine

    ok, why = available("tensorrt")
    if not ok:
        return CPU_RUNTIME, f"fallback to the CPU: {why}"
    try:
        for i, entry in enumerate(cfg.labeler.models):
            key = f"labeler.models[{i}]"
            find_engine(prepared_file(describe(entry, key), key, cfg.cache_dir()))
    except EdgeSemvcError as e:
        return CPU_RUNTIME, f"fallback to the CPU: {e}"
    return "tensorrt", why


def _encoder(cfg: Config, plat: Platform) -> tuple[str, str]:
    if not plat.jetson:
        return CPU_ENCODER, "not a Jetson: the CPU path"
    from .encoders import get_encoder
    from .encoders.base import EncoderSettings
    from .encoders.jetson_v4l2 import build_params

    e = cfg.encoder
    try:  # the backend's own rules on these settings (the frame size is not known yet); a
        # serve camera with the storage profile needs rc crf, which the first refuses
        dataclasses.replace(e, backend="jetson-v4l2").validate()
        build_params(EncoderSettings(
            width=1280, height=720, fps=Fraction(30), time_base=Fraction(1, 30),
            rc=e.rate_control(), bitrate=e.bitrate or None, crf=e.crf, preset=e.preset,
            tune=e.tune or None,
            keyint=e.keyint or None, params=dict(e.params)))
    except (EdgeSemvcError, ValueError) as err:
        return CPU_ENCODER, f"not the Jetson hardware encoder with these settings: {err}"
    ok, why = get_encoder("jetson-v4l2").available()
    if not ok:
        return CPU_ENCODER, f"fallback to the CPU: {why}"
    return "jetson-v4l2", "the Jetson hardware encoder (at most 8 ROI rectangles a frame)"
