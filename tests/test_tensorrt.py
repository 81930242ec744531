"""TensorRT engines: manifests, refusal of engines built elsewhere, the CLI, and (where TensorRT
and a GPU exist) building and running an engine against ONNX Runtime."""
import argparse
import json

import numpy as np
import pytest

from edge_semvc.cli import main as cli_main
from edge_semvc.labeler import tensorrt as T
from edge_semvc.labeler.runtime import RUNTIMES, LabelerError, OnnxRuntime, open_runtime
from edge_semvc.tools import engines as E

TRT_OK, TRT_WHY = T.available()
# gpu: not in the default run (`make test-all` runs it; it skips here with the reason)
def needs_trt(test):
    return pytest.mark.gpu(pytest.mark.skipif(
        not TRT_OK, reason=f"needs TensorRT and a GPU: {TRT_WHY}")(test))

MACHINE = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
           "cuda_runtime": "12.6"}


def manifest(**kw):
    m = {"manifest": T.MANIFEST_VERSION, "model": "face_detection_short_range",
         "precision": "int8", "onnx_sha256": "a" * 64, "source_onnx_sha256": "b" * 64,
         "workspace_mib": T.DEFAULT_WORKSPACE_MIB, "out_dir": "engines", **MACHINE}
    m.update(kw)
    return m


def test_a_matching_manifest_passes():
    assert T.manifest_problems(manifest(), MACHINE) == []
    T.check_manifest(manifest(), MACHINE, "a" * 64)
    T.check_manifest(manifest(), MACHINE, "b" * 64)  # the FP32 model the QDQ one came from


@pytest.mark.parametrize("change, says", [
    ({"tensorrt": "10.0.1"}, "built with TensorRT 10.0.1, this machine has 10.3.0"),
    ({"gpu": "NVIDIA GeForce RTX 3060", "compute_capability": "8.6"},
     "built for NVIDIA GeForce RTX 3060 (compute 8.6), this machine has Orin (compute 8.7)"),
])
def test_an_engine_from_another_machine_is_refused_with_the_rebuild_command(change, says):
    with pytest.raises(LabelerError) as e:
        T.check_manifest(manifest(**change), MACHINE, None, "engines/x.int8.engine")
    msg = str(e.value)
    assert says in msg and "engines/x.int8.engine" in msg
    assert msg.endswith("Rebuild it here with: edge-semvc engines build "
                        "face_detection_short_range --int8")


def test_a_changed_model_is_refused():
    with pytest.raises(LabelerError, match="model file changed since the engine was built"):
        T.check_manifest(manifest(), MACHINE, "c" * 64)


def test_rebuild_command_keeps_the_build_options():
    assert T.rebuild_command(manifest(precision="fp32")) == \
        "edge-semvc engines build face_detection_short_range"
    assert T.rebuild_command(manifest(precision="fp16", workspace_mib=256, out_dir="/e")) == \
        "edge-semvc engines build face_detection_short_range --fp16 --workspace 256 --out /e"


def write_engine(directory, name, precision, onnx_sha, source_sha=None, **kw):
    engine = directory / f"{name}.{precision}.engine"
    engine.write_bytes(b"plan")
    m = manifest(model=name, precision=precision, onnx_sha256=onnx_sha,
                 source_onnx_sha256=source_sha or onnx_sha, **kw)
    T.manifest_path(engine).write_text(json.dumps(m))
    return engine


def test_the_engine_for_a_model_is_found_by_hash(tmp_path):
    onnx = tmp_path / "m.conv1.onnx"
    onnx.write_bytes(b"model")
    sha = T.sha256_file(onnx)
    with pytest.raises(LabelerError, match="build one on this machine with "
                                           "`edge-semvc engines build m --fp16`"):
        T.find_engine(onnx, tmp_path)
    fp16 = write_engine(tmp_path, "m", "fp16", sha)
    write_engine(tmp_path, "other", "int8", "d" * 64)
    assert T.find_engine(onnx, tmp_path) == fp16
    int8 = write_engine(tmp_path, "m", "int8", "e" * 64, source_sha=sha)  # from its QDQ model
    assert T.find_engine(onnx, tmp_path) == int8  # preferred
    assert T.find_engine(onnx, tmp_path, "fp16") == fp16
    with pytest.raises(LabelerError, match=r"no TensorRT engine \(fp32\)"):
        T.find_engine(onnx, tmp_path, "fp32")


def test_the_runtime_refuses_a_mismatched_engine_before_touching_the_gpu(tmp_path, monkeypatch):
    onnx = tmp_path / "m.conv1.onnx"
    onnx.write_bytes(b"model")
    engine = write_engine(tmp_path, "m", "fp32", T.sha256_file(onnx), tensorrt="8.6.1",
                          onnx=str(onnx))
    monkeypatch.setattr(T, "machine_info", lambda: dict(MACHINE))
    with pytest.raises(LabelerError, match="TensorRT 8.6.1, this machine has 10.3.0.*"
                                           "Rebuild it here with: edge-semvc engines build m"):
        T.TensorRTRuntime(engine)
    with pytest.raises(LabelerError, match="does not match this machine"):
        T.TensorRTRuntime(onnx, directory=tmp_path)  # found by the model's hash, then refused
    onnx.write_bytes(b"model, retrained")
    engine2 = write_engine(tmp_path, "n", "fp32", "f" * 64, onnx=str(onnx))
    with pytest.raises(LabelerError, match="model file changed"):
        T.TensorRTRuntime(engine2)
    T.manifest_path(engine2).unlink()
    with pytest.raises(LabelerError, match="has no manifest"):
        T.TensorRTRuntime(engine2)


def test_the_runtime_is_registered_lazily_and_reports_why_it_cannot_run(tmp_path):
    assert RUNTIMES.names() == ["onnxruntime", "tensorrt"]
    assert RUNTIMES.why_unavailable("onnxruntime") is None
    why = RUNTIMES.why_unavailable("tensorrt")
    assert why == (None if TRT_OK else TRT_WHY)
    assert "unknown labeler runtime 'cuda-magic'" in RUNTIMES.why_unavailable("cuda-magic")
    if not TRT_OK:
        assert "TensorRT is not" in why
        onnx = tmp_path / "m.onnx"
        onnx.write_bytes(b"x")
        with pytest.raises(LabelerError, match="TensorRT is not"):
            open_runtime("tensorrt", onnx, 1)


def cli(argv):
    p = argparse.ArgumentParser(prog="edge-semvc engines")
    E.add_arguments(p)
    return E.run(p.parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["build", "m", "--int8", "--fp16"],
    ["build", "m", "--workspace", "0"],
    ["build", "m", "--workspace", "lots"],
    ["build", "m", "--input-shape", "1x3xHxW"],
    ["build"],
    ["rebuild", "m"],
])
def test_cli_argument_errors(argv):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2


def test_int8_needs_the_calibrated_model_first(tmp_path, capsys):
    assert cli_main(["engines", "build", "face_detection_short_range", "--int8",
                   "--calibration", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "face_detection_short_range.int8.qdq.onnx" in err
    assert "edge-semvc calibrate face_detection_short_range --frames" in err
    assert cli_main(["engines", "build", str(tmp_path / "m.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.skipif(TRT_OK, reason="TensorRT is available here")
def test_build_without_tensorrt_says_why(capsys):
    assert cli_main(["engines", "build", "face_detection_short_range", "--out", "/nonexistent"]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err


def test_list_works_without_tensorrt(tmp_path, capsys):
    write_engine(tmp_path, "m", "fp16", "a" * 64)
    assert cli(["list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "m.fp16.engine: m fp16, TensorRT 10.3.0, Orin (compute 8.7)" in out
    assert ("unchecked" in out) != TRT_OK


# ---- on a machine with TensorRT and a GPU -------------------------------------------------------

@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime(tmp_path, precision):
    from edge_semvc.tools.models import prepare_model

    engine = E.build_engine("face_detection_short_range", precision, 256, tmp_path,
                            log=lambda *_: None)
    m = T.read_manifest(engine)
    assert m["precision"] == precision and m["inputs"][0]["shape"] == [1, 128, 128, 3]
    onnx = prepare_model("face_detection_short_range")
    rt = T.TensorRTRuntime(onnx, directory=tmp_path)
    ref = OnnxRuntime(onnx)
    assert rt.input_name == ref.input_name and tuple(rt.input_shape) == tuple(ref.input_shape)
    assert sorted(rt.output_names) == sorted(ref.output_names)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    got, want = rt.run(x), ref.run(x)
    tol = 1e-2 if precision == "fp32" else 0.2
    for name in want:
        assert np.abs(got[name] - want[name]).max() < tol * max(1.0, np.abs(want[name]).max())
    rt.close()


@needs_trt
def test_int8_engine_from_the_calibrated_model(tmp_path):
    from edge_semvc.tools.calibrate import calibrate

    calibrate("face_detection_short_range", ["demo://astronaut"], tmp_path / "cal", 8,
              log=lambda *_: None)
    engine = E.build_engine("face_detection_short_range", "int8", 256, tmp_path / "eng",
                            tmp_path / "cal", log=lambda *_: None)
    rt = T.TensorRTRuntime(engine)
    out = rt.run(np.zeros((1, 128, 128, 3), np.float32))
    assert {v.shape for v in out.values()} == {(1, 896, 16), (1, 896, 1)}
