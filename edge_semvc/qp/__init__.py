"""The QP policy: S130's weights, the map and the extensions' formulas on Q."""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry

# `qp.device` -> where the map is computed: the numpy reference, or the GPU (qp/cuda, whose
# libraries load only when chosen; `why_unavailable("cuda")` is checked by the pre-flight)
QP_DEVICES = Registry("QP map device", {
    "cpu": "edge_semvc.qp.qpmap:build_qp_map",
    "cuda": "edge_semvc.qp.cuda:CudaQpMapper",
}, ConfigError)
