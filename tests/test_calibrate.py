"""INT8 calibration: frames in, a QDQ model out that TensorRT can take and that agrees with FP32."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from edge_semvc.cli import main as cli_main
from edge_semvc.labeler.runtime import LabelerError
from edge_semvc.sources import open_source
from edge_semvc.tools.calibrate import (
    calibrate,
    compare,
    model_input,
    open_model,
    output_head_nodes,
    output_paths,
)
from edge_semvc.tools.calibration_frames import (
    FrameRef,
    load_frames,
    read_frames_list,
    select_frames,
)

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def demo_frames(tmp_path_factory):
    """Six demo frames written as PNG images (a folder source)."""
    d = tmp_path_factory.mktemp("frames")
    src = open_source("demo://astronaut")
    try:
        for f in src.frames():
            if f.index % 15 == 0:
                Image.fromarray(f.rgb()).save(d / f"f{f.index:03d}.png")
    finally:
        src.close()
    return d


def test_frames_are_spread_evenly_and_exclusions_honoured(demo_frames):
    refs = select_frames([str(demo_frames)], 3)
    assert [r.source.rsplit("/", 1)[1] for r in refs] == ["f000.png", "f030.png", "f075.png"]
    rest = select_frames([str(demo_frames)], 10, exclude=set(refs))
    assert len(rest) == 3 and not set(rest) & set(refs)
    # A short source gives what it has; the others make up the count.
    both = select_frames([str(demo_frames), "demo://astronaut"], 20)
    assert sum(r.index is None for r in both) == 6 and len(both) == 20
    clip_refs = [r for r in both if r.index is not None]
    assert clip_refs[0].index == 0 and clip_refs[-1].index == 89
    frames = list(load_frames(clip_refs[:3]))
    assert [r.index for r, _ in frames] == [f.index for _, f in frames] == [0, 7, 14]


def test_sources_that_do_not_exist_are_refused(tmp_path):
    with pytest.raises(LabelerError, match="frame source not found"):
        select_frames([str(tmp_path / "nope.mp4")], 4)
    with pytest.raises(LabelerError, match="no images"):
        select_frames([str(tmp_path)], 4)


@pytest.mark.parametrize("name", ["selfie_segmentation_landscape", "face_detection_short_range"])
def test_model_input_is_what_the_labeler_feeds_the_model(name):
    _, adapter, path = open_model(name, **QUIET)
    assert path.suffix == ".onnx" and path.exists()
    frame = next(iter(open_source("demo://astronaut").frames()))
    seen = []
    real = adapter.rt.run
    adapter.rt.run = lambda x: seen.append(x) or real(x)
    try:
        adapter(frame)
    finally:
        adapter.rt.run = real
    assert np.array_equal(model_input(adapter, frame), seen[0])


def test_output_heads_stay_float():
    _, _, path = open_model("face_detection_short_range", **QUIET)
    m = onnx.load(str(path))
    for i, n in enumerate(m.graph.node):
        n.name = n.name or f"{n.op_type}_{i}"
    heads = output_head_nodes(m)
    convs = [n for n in m.graph.node if n.name in heads and n.op_type == "Conv"]
    assert len(convs) == 4  # BlazeFace: box and score heads on two feature maps


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, demo_frames):
    out = tmp_path_factory.mktemp("calibration")
    paths = {name: calibrate(name, [demo_frames], out, 6, **QUIET)
             for name in ("selfie_segmentation_landscape", "face_detection_short_range")}
    return out, paths


def test_calibration_writes_a_symmetric_qdq_model_and_its_frames(calibrated, demo_frames):
    out, paths = calibrated
    for name, path in paths.items():
        assert path == output_paths(name, out)[0] and path.name == f"{name}.int8.qdq.onnx"
        m = onnx.load(str(path))
        onnx.checker.check_model(m)
        ops = {n.op_type for n in m.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QLinearConv" not in ops
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        zps = [inits[n.input[2]] for n in m.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
        # TensorRT takes symmetric INT8 only: every zero point 0, activations and weights int8
        # (biases are int32).
        assert zps and not any(z.any() for z in zps)
        assert {z.dtype for z in zps} == {np.dtype(np.int8), np.dtype(np.int32)}
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta["edge_semvc.calibration_frames"] == "6"
        frames = read_frames_list(output_paths(name, out)[1])
        assert len(frames) == 6 and all(FrameRef(str(p)) in frames
                                        for p in sorted(demo_frames.iterdir()))


def test_int8_agrees_with_fp32_on_held_out_frames(calibrated):
    out, paths = calibrated
    seg = compare("selfie_segmentation_landscape", paths["selfie_segmentation_landscape"],
                  ["demo://astronaut"], [], 8, **QUIET)
    assert seg["mb_iou"] > 0.85 and seg["pixel_iou"] > 0.85 and seg["frames"] == 8
    face = compare("face_detection_short_range", paths["face_detection_short_range"],
                   ["demo://astronaut"], [], 8, **QUIET)
    assert face["detection_f1"] >= 0.9 and face["detections_fp32"] >= 6
    assert face["fp32_ms"] > 0 and face["int8_ms"] > 0


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["calibrate", "selfie_segmentation_landscape"])  # --frames is required
    assert e.value.code == 2
    assert cli_main(["calibrate", "no_such_model", "--frames", "demo://astronaut", "--out", str(tmp_path)]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert cli_main(["calibrate", "selfie_segmentation_landscape", "--frames", str(tmp_path / "x.mp4"),
                 "--out", str(tmp_path)]) == 2
    assert "frame source not found" in capsys.readouterr().err
    assert cli_main(["calibrate", "selfie_segmentation_landscape", "--frames", "demo://astronaut", "--count",
                 "0", "--out", str(tmp_path)]) == 2
    assert "--count" in capsys.readouterr().err
