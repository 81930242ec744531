"""Pre-flight: the backends a run gets, chosen once before it starts and reported.

`labeler.runtime` and `encoder.backend` default to `auto`. On a Jetson (`platform.py`) `auto`
means the TensorRT runtime when TensorRT runs here and every configured model has an engine built
on this machine (`edge-semvc engines build`), and the Jetson V4L2 hardware encoder when it runs
here and the encoder settings suit it (it has no CRF and no storage profile; the Orin Nano has
no hardware encoder at all). Anything missing gives the CPU path (ONNX Runtime, x264), with the
reason in the report. Elsewhere `auto` is the CPU path. A name other than `auto` is kept as it
is: the backend then says itself whether it can run.

Hardware named outright is checked here too: `qp.device: cuda` where no CUDA launcher or
NVRTC is usable is refused (ConfigError naming `qp.device` and why) before anything opens.

The commands (`encode`, `serve`, `bench`, `field-bench`) call `resolve` after loading the
configuration and preparing the models; the configuration's own validation never probes
hardware.
"""
from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction

from .config import Config
from .encoders import AUTO, CPU_ENCODER, ENCODERS
from .encoders.base import EncoderSettings
from .encoders.jetson_v4l2 import build_params
from .errors import ConfigError, EdgeSemvcError
from .labeler.registry import model_specs, prepared_file
from .labeler.runtime import CPU_RUNTIME, RUNTIMES
from .labeler.tensorrt import find_engine  # TensorRT itself loads only when an engine runs
from .platform import Platform, detect
from .qp import QP_DEVICES

log = logging.getLogger("edge_semvc")


@dataclasses.dataclass
class Choices:
    platform: Platform
    report: list[str]  # one line per decision, as logged


def resolve(cfg: Config, platform: Platform | None = None) -> Choices:
    """Replace `auto` in `cfg.labeler.runtime` and `cfg.encoder.backend` (in place) by the
    backend this machine runs, and say why (logged: at INFO on a Jetson, DEBUG elsewhere)."""
    why = QP_DEVICES.why_unavailable(cfg.qp.device)
    if why is not None:
        raise ConfigError(f"invalid value for qp.device: {cfg.qp.device!r} (expected cpu; "
                          f"{cfg.qp.device} is not usable here: {why})", "qp.device")
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
    why = RUNTIMES.why_unavailable("tensorrt")
    if why is not None:
        return CPU_RUNTIME, f"fallback to the CPU: {why}"
    try:
        for spec in model_specs(cfg.labeler.models):
            find_engine(prepared_file(spec.description, spec.key, cfg.cache_dir()))
    except EdgeSemvcError as e:
        return CPU_RUNTIME, f"fallback to the CPU: {e}"
    return "tensorrt", "TensorRT with an engine for every model"


def _encoder(cfg: Config, plat: Platform) -> tuple[str, str]:
    if not plat.jetson:
        return CPU_ENCODER, "not a Jetson: the CPU path"
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
    why = ENCODERS.why_unavailable("jetson-v4l2")
    if why is not None:
        return CPU_ENCODER, f"fallback to the CPU: {why}"
    return "jetson-v4l2", "the Jetson hardware encoder (at most 8 ROI rectangles a frame)"
