"""The labeler's model registry and model descriptions (run time).

The registry is `registry.yaml` beside this file (its header documents the fields).
`labeler.models` entries are turned into full descriptions by `describe()`: a registry name, a
registry name with overrides, or a model file given by `path` with its own description (same
fields as the registry). Mistakes raise ConfigError naming the key.

At run time a model is only looked up in the cache (`prepared_file`): fetching, checking and
converting it is the offline tool's work (`edge_semvc.tools.models`, `edge-semvc models
prepare`), done before a run. Cache: `cache_dir` argument, else $EDGE_SEMVC_CACHE, else
~/.cache/edge_semvc.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..checksums import intact, sha256_file
from ..errors import ConfigError, ModelError

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")

ROLES = ("segmentation", "detection", "text", "classifier")
# Roles the labeler runs; a classifier reads regions other models found (the emotion
# analyser's model) and is refused in `labeler.models`.
LABELER_ROLES = ("segmentation", "detection", "text")
# Decoder name -> (default role, its options with their defaults). None: taken from
# LabelerConfig at run time (ssd-anchors: face_box_scale, face_min_score).
DECODERS: dict[str, tuple[str, dict[str, Any]]] = {
    "probability-mask": ("segmentation", {"activation": "none", "pool": "mean", "output": 0,
                                          "output_layout": None}),
    "db-text": ("text", {"activation": "none", "pool": "max", "output": 0,
                         "output_layout": None}),
    "ssd-anchors": ("detection", {"anchors": {"strides": [8, 16, 16, 16], "per_layer": 2},
                                  "box_scale": None, "min_score": None, "iou_threshold": 0.3}),
    "yolox": ("detection", {"strides": [8, 16, 32], "box_scale": 1.0, "iou_threshold": 0.45,
                            "max_box_area": 1.0}),
    "boxes": ("detection", {"box_scale": 1.0, "iou_threshold": 0.3, "max_box_area": 1.0}),
    "nanodet": ("detection", {"strides": [8, 16, 32], "box_scale": 1.0, "iou_threshold": 0.6,
                              "max_box_area": 1.0}),
}
INPUT_DEFAULTS: dict[str, Any] = {"shape": None, "size": None, "layout": None, "color": "RGB",
                                  "mean": 0.0, "std": 1.0, "resize": "stretch", "pad": 0.0,
                                  "multiple": 1}
# Keys a `labeler.models` mapping may carry: on a registry model (overrides) and, in addition,
# on a model given by path (its whole description).
OVERRIDE_KEYS = ("name", "interval", "threshold", "map", "input", "requires")
PATH_KEYS = ("path", "sha256", "role", "decoder", "classes")
FORMATS = {".onnx": "onnx", ".tflite": "tflite"}
CONVERTED = ("tflite", "tfjs")  # formats the project converts to ONNX itself


# --- the registry -------------------------------------------------------------------------------
def _load_registry() -> tuple[dict, dict, dict]:
    data = yaml.safe_load(REGISTRY_FILE.read_text())
    return data["models"], data.get("class_lists", {}), data.get("class_map", {})


REGISTRY, CLASS_LISTS, CLASS_MAP = _load_registry()


def list_models() -> list[dict]:
    """The registry entries, each with its `name` and its classes as a list."""
    out = []
    for name, spec in REGISTRY.items():
        entry = copy.deepcopy({"name": name, **spec})
        if isinstance(entry.get("classes"), str):
            entry["classes"] = list(CLASS_LISTS[entry["classes"]])
        out.append(entry)
    return out


def default_models() -> list[str]:
    return [name for name, spec in REGISTRY.items() if spec.get("default")]


def _spec(name: str) -> dict:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})") from None


# --- descriptions (registry entries and labeler.models entries) ---------------------------------
def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"invalid value for {key}: {value!r} (expected {expected})")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelSpec:
    """One `labeler.models` entry resolved by `describe`: the key its messages name and the
    typed fields every user reads; `description` is the whole (checked, defaulted)
    description that the adapter and the model preparation read."""

    key: str  # labeler.models[i]
    name: str
    role: str
    decoder: str
    products: tuple[str, ...]  # the product classes it labels
    description: dict


def model_specs(models: list, check_path: bool = True) -> list[ModelSpec]:
    """`labeler.models` resolved into specs (ConfigError naming the entry's key): what the
    labeler, the pre-flight, the service and the tools build from."""
    specs = []
    for i, entry in enumerate(models):
        key = f"labeler.models[{i}]"
        d = describe(entry, key, check_path)
        specs.append(ModelSpec(key, d["name"], d["role"], d["decoder"], tuple(d["products"]), d))
    return specs


def describe(entry: Any, key: str = "labeler.models[0]", check_path: bool = True) -> dict:
    """A `labeler.models` entry -> the full description the labeler builds its adapter from.

    `entry` is a registry name, or a mapping: `name` (a registry name) with overrides
    (OVERRIDE_KEYS and decoder options), or `path` (an .onnx or .tflite file) with the model's own
    description (decoder, classes, input, ...). Raises ConfigError naming the key.
    """
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise _bad(key, entry, "a registry model name or a mapping with `name` or `path`")
    if entry.get("path") is None:
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key} needs `name` (a registry model) or `path` (a model file)")
        if name not in REGISTRY:
            raise ConfigError(f"{key}: unknown model {name!r} (registry: {', '.join(REGISTRY)}; "
                              f"a model file is given with `path:` and its description)")
        base = copy.deepcopy(REGISTRY[name])
        decoder = base["decoder"]
        allowed = (*OVERRIDE_KEYS, *DECODERS[decoder][1])
        _check_keys(entry, allowed, key, f"a registry model takes {', '.join(allowed)}")
        desc = {**base, **{k: v for k, v in entry.items() if k != "input"}, "registry": True}
        if "input" in entry:
            if not isinstance(entry["input"], dict):
                raise _bad(f"{key}.input", entry["input"], "a mapping")
            desc["input"] = {**base.get("input", {}), **entry["input"]}
    else:
        decoder = entry.get("decoder")
        if decoder not in DECODERS:
            raise _bad(f"{key}.decoder", decoder, " | ".join(DECODERS))
        allowed = (*OVERRIDE_KEYS, *PATH_KEYS, *DECODERS[decoder][1])
        _check_keys(entry, allowed, key, f"a model given by path takes {', '.join(allowed)}")
        path = entry["path"]
        if not isinstance(path, str) or not path:
            raise _bad(f"{key}.path", path, "the path of an .onnx or .tflite file")
        p = Path(path).expanduser()
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise _bad(f"{key}.path", path, "an .onnx or .tflite file")
        if check_path and not p.is_file():
            raise ConfigError(f"{key}.path: {path} does not exist or is not a file")
        if "classes" not in entry:
            raise ConfigError(f"{key}: a model given by path needs `classes` (its output classes "
                              f"in order, or one of {', '.join(CLASS_LISTS)})")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise _bad(f"{key}.sha256", sha, "64 hex digits")
        desc = {**entry, "name": entry.get("name") or p.stem, "path": str(p.resolve()),
                "format": fmt, "registry": False}
    return _normalise(desc, key)


def _check_keys(entry: dict, allowed, key: str, hint: str) -> None:
    for k in entry:
        if k not in allowed:
            raise ConfigError(f"unknown config key '{key}.{k}' ({hint})")


def _normalise(desc: dict, key: str) -> dict:
    """Check every field of a description and fill in the defaults."""
    decoder = desc.get("decoder")
    if decoder not in DECODERS:
        raise _bad(f"{key}.decoder", decoder, " | ".join(DECODERS))
    default_role, options = DECODERS[decoder]
    desc["role"] = desc.get("role") or default_role
    if desc["role"] not in ROLES:
        raise _bad(f"{key}.role", desc["role"], " | ".join(ROLES))

    classes = desc.get("classes")
    if isinstance(classes, str):
        if classes not in CLASS_LISTS:
            raise _bad(f"{key}.classes", classes, f"a list of names or one of "
                                                  f"{', '.join(CLASS_LISTS)}")
        classes = list(CLASS_LISTS[classes])
    if not (isinstance(classes, list) and classes and
            all(isinstance(c, str) and c for c in classes)):
        raise _bad(f"{key}.classes", classes, "a non-empty list of class names")
    desc["classes"] = classes

    mapping = desc.get("map")
    if mapping is None:
        mapping = {c: CLASS_MAP[c] for c in classes if c in CLASS_MAP}
    if not isinstance(mapping, dict):
        raise _bad(f"{key}.map", mapping, "a mapping {model class: product class}")
    for src, dst in mapping.items():
        if src not in classes:
            shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
            raise ConfigError(f"invalid value for {key}.map: {src!r} is not one of the model's "
                              f"classes ({shown})")
        if dst is not None and not (isinstance(dst, str) and dst and dst != "background"):
            raise _bad(f"{key}.map.{src}", dst, "a product class name (or null to ignore it)")
    products: list[str] = []
    for c in classes:
        if mapping.get(c) and mapping[c] not in products:
            products.append(mapping[c])
    if not products:
        raise ConfigError(f"{key}: no class of the model maps to a product class (set `map`, "
                          f"e.g. {{{classes[0]}: person}})")
    desc["map"] = {c: mapping[c] for c in classes if mapping.get(c)}
    desc["products"] = products
    desc["targets"] = [[i for i, c in enumerate(classes) if mapping.get(c) == p] for p in products]

    for name, ok, expected in (
            ("threshold", lambda v: _number(v) and 0 < v < 1, "a probability between 0 and 1"),
            ("interval", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
             "an integer >= 1")):
        if desc.get(name) is not None and not ok(desc[name]):
            raise _bad(f"{key}.{name}", desc[name], expected)
        desc.setdefault(name, None)

    requires = desc.setdefault("requires", None)
    if requires is not None and not (isinstance(requires, str) and requires
                                     and requires != "background"):
        raise _bad(f"{key}.requires", requires, "a product class name, e.g. face (or null)")
    desc["input"] = _normalise_input(desc.get("input") or {}, f"{key}.input")
    desc["options"] = _normalise_options(decoder, options, desc, key)
    if decoder == "db-text" and len(classes) != 1:
        raise _bad(f"{key}.classes", classes, "one class (a DB map has one channel)")
    return desc


def _normalise_input(inp: Any, key: str) -> dict:
    if not isinstance(inp, dict):
        raise _bad(key, inp, "a mapping")
    for k in inp:
        if k not in INPUT_DEFAULTS:
            raise ConfigError(f"unknown config key '{key}.{k}' "
                              f"(known: {', '.join(INPUT_DEFAULTS)})")
    out = {**INPUT_DEFAULTS, **inp}
    shape = out["shape"]
    if shape is not None and not (isinstance(shape, list) and len(shape) == 4 and all(
            d is None or (isinstance(d, int) and d > 0) for d in shape)):
        raise _bad(f"{key}.shape", shape, "4 dimensions (null where dynamic)")
    size = out["size"]
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)):
        raise _bad(f"{key}.size", size, "[width, height] in pixels")
    if out["layout"] not in (None, "NCHW", "NHWC"):
        raise _bad(f"{key}.layout", out["layout"], "NCHW | NHWC")
    if out["color"] not in ("RGB", "BGR"):
        raise _bad(f"{key}.color", out["color"], "RGB | BGR")
    for name in ("mean", "std"):
        v = out[name]
        if not (_number(v) or (isinstance(v, list) and len(v) == 3 and all(map(_number, v)))):
            raise _bad(f"{key}.{name}", v, "a number or three numbers (pixel units, 0..255)")
        if name == "std" and any(x == 0 for x in (v if isinstance(v, list) else [v])):
            raise _bad(f"{key}.std", v, "non-zero")
    if out["resize"] not in ("stretch", "letterbox", "fit"):
        raise _bad(f"{key}.resize", out["resize"], "stretch | letterbox | fit")
    if not _number(out["pad"]):
        raise _bad(f"{key}.pad", out["pad"], "a number (pixel units)")
    if not (isinstance(out["multiple"], int) and out["multiple"] >= 1):
        raise _bad(f"{key}.multiple", out["multiple"], "an integer >= 1")
    return out


def _normalise_options(decoder: str, defaults: dict, desc: dict, key: str) -> dict:
    opts = {k: desc[k] if desc.get(k) is not None else v for k, v in defaults.items()}
    checks = {
        "activation": (lambda v: v in ("none", "sigmoid", "softmax"), "none | sigmoid | softmax"),
        "pool": (lambda v: v in ("mean", "max"), "mean | max"),
        "output": (lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                   or (isinstance(v, str) and v), "an output index or name"),
        "output_layout": (lambda v: v in (None, "NCHW", "NHWC"), "NCHW | NHWC"),
        "anchors": (lambda v: isinstance(v, dict) and set(v) == {"strides", "per_layer"}
                    and isinstance(v["strides"], list) and v["strides"]
                    and all(isinstance(s, int) and s > 0 for s in v["strides"])
                    and isinstance(v["per_layer"], int) and v["per_layer"] >= 1,
                    "{strides: [8, 16, ...], per_layer: N}"),
        "strides": (lambda v: isinstance(v, list) and v and
                    all(isinstance(s, int) and s > 0 for s in v), "a list of strides"),
        "box_scale": (lambda v: v is None or (_number(v) and v > 0), "> 0"),
        "min_score": (lambda v: v is None or (_number(v) and 0 <= v <= 1), "between 0 and 1"),
        "iou_threshold": (lambda v: _number(v) and 0 < v <= 1, "between 0 and 1"),
        "max_box_area": (lambda v: _number(v) and 0 < v <= 1, "a fraction of the frame in (0, 1]"),
    }
    for k, v in opts.items():
        ok, expected = checks[k]
        if not ok(v):
            raise _bad(f"{key}.{k}", v, expected)
    return opts


def check_models_config(models: Any, check_path: bool = True) -> None:
    """Config validation of `labeler.models`: a list of registry names or mappings. Plain names
    are only checked against the registry when the labeler starts."""
    if not isinstance(models, list):
        raise _bad("labeler.models", models, "a list of model names or mappings")
    seen: dict[str, str] = {}  # a model's name (or path) -> the key that named it first
    for i, entry in enumerate(models):
        key = f"labeler.models[{i}]"
        if isinstance(entry, str):
            if not entry.strip():
                raise _bad(key, entry, "a model name")
            role, name = (REGISTRY.get(entry) or {}).get("role"), entry
        else:
            desc = describe(entry, key, check_path=check_path)
            role, name = desc["role"], str(entry.get("path") or desc["name"])
        if name in seen:  # it would run twice, and its statistics be one model's
            raise _bad(key, entry, f"a model not already listed ({seen[name]} is {name!r})")
        seen[name] = key
        if role is not None and role not in LABELER_ROLES:
            raise _bad(key, entry, f"a labeler model ({' | '.join(LABELER_ROLES)}); this one is "
                                   f"a {role}, run by its own analyser")


def product_classes(models: list) -> set[str]:
    """Every product class a model could label: the registry's class map and entries' `map`s."""
    known = {dst for dst in CLASS_MAP.values() if dst}
    for spec in REGISTRY.values():
        known |= {dst for dst in (spec.get("map") or {}).values() if dst}
    for entry in models:
        if isinstance(entry, dict) and isinstance(entry.get("map"), dict):
            known |= {dst for dst in entry["map"].values() if isinstance(dst, str) and dst}
    return known


# --- the cache ----------------------------------------------------------------------------------
def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("EDGE_SEMVC_CACHE")
                or Path.home() / ".cache" / "edge_semvc")


# The converters' versions are in the cached file names, so a converter fix replaces cached
# conversions (each converter in edge_semvc/tools reads its own from here).
CONVERTER_VERSIONS = {"tflite": 1, "tfjs": 1}


def model_size(spec: dict, size=None) -> tuple[int, int]:
    """The input size (width, height) a tfjs model is converted for: `size`, else the entry's."""
    w, h = size or (spec.get("input") or {}).get("size") or (0, 0)
    return int(w), int(h)


def model_paths(name: str, cache_dir=None, size=None) -> tuple[Path, Path]:
    """(source file, .onnx) paths of a registry model in the cache (they may not exist yet); the
    same path twice for a model published as ONNX. A tfjs model's source is its graph .json
    (weights beside it) and its .onnx is per input `size` (default: the entry's)."""
    spec = _spec(name)
    models = cache_root(cache_dir) / "models"
    # The converter's version is in the name, so a converter fix replaces cached conversions.
    if spec["format"] == "tflite":
        return models / f"{name}.tflite", models / f"{name}.conv{CONVERTER_VERSIONS['tflite']}.onnx"
    if spec["format"] == "tfjs":
        graph = next(p for p in spec["source"]["files"] if p.endswith(".json"))
        w, h = model_size(spec, size)
        return (models / f"{name}.tfjs" / Path(graph).name,
                models / f"{name}.{w}x{h}.conv{CONVERTER_VERSIONS['tfjs']}.onnx")
    return models / f"{name}.onnx", models / f"{name}.onnx"


def prepared_file(desc: dict, key: str, cache_dir=None) -> Path:
    """The .onnx to load for a description, which must have been prepared: a registry model's
    file in the cache, a model given by path in place (its sha256 checked when the entry gives
    one) or, if it is .tflite, its conversion in `<cache>/models/user/`. Raises ModelError
    naming the command that prepares it."""
    if desc["registry"]:
        size = desc["input"]["size"] if desc.get("format") == "tfjs" else None
        onx = model_paths(desc["name"], cache_dir, size)[1]
        if onx.exists() and (desc["format"] not in CONVERTED or intact(onx)):
            return onx
        raise ModelError(f"{key}: model {desc['name']!r} is not prepared or its file is damaged "
                         f"({onx}); run `edge-semvc models prepare {desc['name']}` (or `make`)")
    path, actual = checked_user_file(desc, key)
    if desc["format"] == "onnx":
        return path
    onx = user_conversion_path(path, actual or sha256_file(path), cache_dir)
    if intact(onx):
        return onx
    raise ModelError(f"{key}.path: {path} is not converted yet (or its conversion is damaged); "
                     f"run `edge-semvc models prepare --config FILE` with this configuration")


def checked_user_file(desc: dict, key: str) -> tuple[Path, str | None]:
    """A model given by path: (the file, its sha256 when the entry pins one and it matched)."""
    path = Path(desc["path"])
    if not path.is_file():
        raise ModelError(f"{key}.path: {path} does not exist or is not a file")
    actual = None
    if desc.get("sha256"):
        actual = sha256_file(path)
        if actual != desc["sha256"].lower():
            raise ModelError(f"{key}.path: {path}: sha256 mismatch (expected "
                             f"{desc['sha256'].lower()}, got {actual})")
    return path, actual


def user_conversion_path(path: Path, sha256: str, cache_dir=None) -> Path:
    """Where the ONNX conversion of a user's .tflite file lives in the cache."""
    return (cache_root(cache_dir) / "models" / "user" /
            f"{path.stem}-{sha256[:12]}.conv{CONVERTER_VERSIONS['tflite']}.onnx")
