"""Where it is meant to run (README, "Platforms"): Jetson detection from a fake root, the
backends the pre-flight picks there, the Makefile's venv and pins per platform, and the check
that every supported target installs from wheels only."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from edge_semvc import preflight
from edge_semvc.checksums import sha256_file
from edge_semvc.config import load_config
from edge_semvc.encoders.jetson_v4l2 import JetsonV4l2Encoder
from edge_semvc.labeler.registry import describe, prepared_file
from edge_semvc.labeler.tensorrt import TensorRTRuntime
from edge_semvc.platform import detect

ROOT = Path(__file__).resolve().parents[1]
ORIN_RELEASE = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n")


def fake_jetson(root: Path, release=ORIN_RELEASE, model="NVIDIA Jetson Orin Nano Developer Kit",
                video=("vi-output, imx219 9-0010", "HD USB Camera")) -> Path:
    """The files a Jetson's detection reads, as JetPack writes them."""
    if release:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc/nv_tegra_release").write_text(release)
    if model:
        (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
        (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")  # NUL-terminated
    for i, name in enumerate(video):
        (root / f"sys/class/video4linux/video{i}").mkdir(parents=True, exist_ok=True)
        (root / f"sys/class/video4linux/video{i}/name").write_text(name + "\n")
    return root


def test_detects_jetpack_6_orin_with_its_csi_camera(tmp_path):
    plat = detect(fake_jetson(tmp_path))
    assert plat.jetson and plat.reason == "/etc/nv_tegra_release"
    assert (plat.model, plat.l4t, plat.jetpack) == ("NVIDIA Jetson Orin Nano Developer Kit",
                                                    "36.4.3", "6")
    assert plat.csi_cameras == ("csi://0",)  # the USB camera is not a CSI one
    assert "JetPack 6" in plat.describe() and "csi://0" in plat.describe()


def test_detects_jetpack_7_and_a_container_with_only_the_model(tmp_path):
    thor = detect(fake_jetson(tmp_path / "thor", release="# R38 (release), REVISION: 2.1, "
                              "GCID: 1, BOARD: generic, EABI: aarch64\n",
                              model="NVIDIA Jetson AGX Thor Developer Kit", video=()))
    assert (thor.jetson, thor.l4t, thor.jetpack, thor.csi_cameras) == (True, "38.2.1", "7", ())
    box = detect(fake_jetson(tmp_path / "box", release=None, video=()))
    assert box.jetson and box.reason == "the device-tree model" and box.l4t is None


def test_a_pc_is_not_a_jetson_and_says_why(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("Raspberry Pi 5 Model B Rev 1.0")
    plat = detect(tmp_path)
    assert not plat.jetson and "Raspberry Pi 5" in plat.reason
    assert not detect(tmp_path / "nothing").jetson


def platform_cli(*args, env=None):
    """`python -S -m edge_semvc.platform`: no site-packages, as the Makefile runs it with the
    system's Python before any venv exists."""
    r = subprocess.run([sys.executable, "-S", "-m", "edge_semvc.platform", *args], cwd=ROOT,
                       capture_output=True, text=True, env=env, check=True)
    return r.stdout.strip()


def test_platform_command_gives_the_venv_arguments_and_the_camera(tmp_path):
    jet = fake_jetson(tmp_path / "jet")
    assert platform_cli("--root", str(jet), "--venv-args") == "--system-site-packages"
    assert platform_cli("--root", str(jet), "--camera") == "csi://0"
    assert platform_cli("--root", str(tmp_path / "pc"), "--venv-args") == ""
    assert platform_cli("--root", str(tmp_path / "pc"), "--camera") == ""
    env = {**os.environ, "EDGE_SEMVC_PLATFORM_ROOT": str(jet)}
    assert json.loads(platform_cli(env=env))["jetpack"] == "6"


def make_n(*args):
    r = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return r.stdout


def test_makefile_venvs_see_jetpacks_packages_only_on_a_jetson(tmp_path):
    venv = tmp_path / "venv"
    jet = fake_jetson(tmp_path / "jet")
    out = make_n(f"PLATFORM_ROOT={jet}", f"VENV={venv}", f"{venv}/.installed")
    assert f"-m venv --system-site-packages {venv}" in out
    assert "--only-binary=:all: -r requirements" in out  # wheels only, never a source build
    out = make_n(f"PLATFORM_ROOT={tmp_path / 'pc'}", f"VENV={venv}", f"{venv}/.installed")
    assert f"-m venv  {venv}" in out and "system-site" not in out  # no venv arguments
    service = make_n(f"PLATFORM_ROOT={jet}", f"SERVICE_PY={sys.executable}", "install-service")
    assert "-m venv --system-site-packages /opt/edge-semvc/venv" in service
    assert "--only-binary=:all: -r $runtime" in service


def find_python(minor: str) -> str:
    """An interpreter of Python 3.<minor> that runs here (pyenv's, or one on PATH), else skip."""
    found = [*map(str, sorted(Path("/root/.pyenv/versions").glob(f"3.{minor}.*/bin/python"))),
             shutil.which(f"python3.{minor}")]
    for python in filter(None, found):
        if subprocess.run([python, "-c", "pass"], capture_output=True).returncode == 0:
            return python
    pytest.skip(f"no Python 3.{minor} here")


@pytest.mark.parametrize("minor", ["10", "11", "12", "13"])
def test_makefile_picks_the_lock_of_its_python(tmp_path, minor):
    python = find_python(minor)
    out = make_n(f"PY={python}", f"VENV={tmp_path}/v", f"{tmp_path}/v/.installed")
    lock = f"requirements/py3{minor}.txt"
    assert f"-r {lock if (ROOT / lock).exists() else 'requirements.txt'}" in out


# ---- the pre-flight: which backends a run gets ----------------------------------------------

def test_on_a_pc_auto_is_the_cpu_path(tmp_path):
    cfg = load_config()
    assert (cfg.labeler.runtime, cfg.encoder.backend) == ("auto", "auto")
    choices = preflight.resolve(cfg, detect(tmp_path))
    assert (cfg.labeler.runtime, cfg.encoder.backend) == ("onnxruntime", "x264")
    assert "not a Jetson" in choices.report[0]


def test_on_a_jetson_without_tensorrt_the_cpu_fallback_is_reported(tmp_path):
    plat = detect(fake_jetson(tmp_path))
    cfg = load_config()  # rc crf: the hardware encoder has no CRF
    report = preflight.resolve(cfg, plat).report
    assert (cfg.labeler.runtime, cfg.encoder.backend) == ("onnxruntime", "x264")
    assert "TensorRT is not available" in report[1] and "fallback to the CPU" in report[1]
    assert "rc='crf' is not available on Jetson's hardware encoder" in report[2]
    cfg = load_config(None, ["encoder.rc=cbr", "encoder.bitrate=2000000"])
    report = preflight.resolve(cfg, plat).report  # settings fit; no V4L2 encoder here
    assert cfg.encoder.backend == "x264" and "fallback to the CPU" in report[2]
    cfg = load_config(None, ["encoder.backend=x265", "labeler.runtime=onnxruntime"])
    assert preflight.resolve(cfg, plat).report == [f"platform: {plat.describe()}"]  # kept
    assert (cfg.labeler.runtime, cfg.encoder.backend) == ("onnxruntime", "x265")


def test_on_a_jetson_with_engines_and_the_encoder_its_backends_are_chosen(tmp_path,
                                                                         monkeypatch):
    """TensorRT and the V4L2 encoder cannot run here: their availability is granted, the rest
    (engine lookup by the model's sha256, the settings check) is the real code."""
    monkeypatch.setattr(TensorRTRuntime, "unavailable_reason", staticmethod(lambda: None))
    monkeypatch.setattr(JetsonV4l2Encoder, "available", classmethod(lambda cls: (True, "")))
    monkeypatch.setenv("EDGE_SEMVC_ENGINES", str(tmp_path / "engines"))
    plat = detect(fake_jetson(tmp_path / "jet"))
    sets = ["labeler.models=[face_detection_short_range]", "encoder.rc=cbr",
            "encoder.bitrate=2000000"]
    cfg = load_config(None, sets)
    report = preflight.resolve(cfg, plat).report
    assert cfg.labeler.runtime == "onnxruntime" and "engines build" in report[1]  # none built
    assert cfg.encoder.backend == "jetson-v4l2"
    onnx = prepared_file(describe(cfg.labeler.models[0]), "m", cfg.cache_dir())
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines/face.fp16.engine").write_bytes(b"plan")
    (tmp_path / "engines/face.fp16.engine.json").write_text(json.dumps(
        {"onnx_sha256": sha256_file(onnx), "precision": "fp16"}))
    cfg = load_config(None, sets)
    preflight.resolve(cfg, plat)
    assert (cfg.labeler.runtime, cfg.encoder.backend) == ("tensorrt", "jetson-v4l2")


def test_encode_on_a_fake_jetson_reports_its_fallback_and_encodes(tmp_path):
    out, stats = tmp_path / "out.mkv", tmp_path / "s.json"
    env = {**os.environ, "EDGE_SEMVC_PLATFORM_ROOT": str(fake_jetson(tmp_path / "jet"))}
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", "demo://astronaut", out,
                        "--frames", "8", "--stats-json", stats], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "platform: NVIDIA Jetson Orin Nano Developer Kit; L4T 36.4.3 (JetPack 6)" in r.stderr
    assert "labeler.runtime: onnxruntime (fallback to the CPU: TensorRT" in r.stderr
    assert "encoder.backend: x264 (not the Jetson hardware encoder" in r.stderr
    config = json.loads(stats.read_text())["config"]
    assert (config["labeler"]["runtime"], config["encoder"]["backend"]) == ("onnxruntime", "x264")
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8


# ---- every target installs from wheels only ----------------------------------------------------

def check_wheels(root, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts/check_wheels.py"), "--root",
                           str(root), "--cache", str(root / "cache"), *args],
                          capture_output=True, text=True, timeout=300)


def test_a_pin_without_a_wheel_for_a_target_fails_the_check(tmp_path):
    (tmp_path / "requirements.txt").write_text("# Runtime\nnumpy==2.4.6\n")
    r = check_wheels(tmp_path, "--target", "JetPack 6")  # numpy 2.4 has no Python 3.10 wheels
    assert r.returncode == 1
    assert "JetPack 6 (Jetson Orin, Ubuntu 22.04), Python 3.10 aarch64: requirements.txt " \
           "does not install from wheels only" in r.stderr and "numpy==2.4.6" in r.stderr
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements/py310.txt").write_text("# Runtime\nnumpy==1.26.4\n")
    r = check_wheels(tmp_path, "--target", "JetPack 6")
    assert r.returncode == 0, r.stderr
    assert "requirements/py310.txt, 1 wheels" in r.stdout
    again = check_wheels(tmp_path, "--target", "JetPack 6")
    assert again.returncode == 0 and "(unchanged)" in again.stdout  # kept: pip not asked


def test_locks_name_the_same_packages_and_none_of_jetpacks(tmp_path):
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements.txt").write_text("numpy==2.4.6\n")
    (tmp_path / "requirements/py310.txt").write_text("numpy==1.26.4\ntensorrt==10.3.0\n")
    r = check_wheels(tmp_path, "--target", "no such target")
    assert r.returncode == 1
    assert "requirements/py310.txt and requirements.txt name different packages: " \
           "['tensorrt']" in r.stderr
    assert "requirements/py310.txt pins tensorrt, which JetPack brings itself" in r.stderr


@pytest.mark.slow
def test_python_3_10_installs_from_its_lock_and_encodes(tmp_path):
    """Another Python end to end: a venv of Python 3.10 from requirements/py310.txt (wheels
    only), then a real encode through it."""
    venv = tmp_path / "venv"
    subprocess.run([find_python("10"), "-m", "venv", venv], check=True)
    pip = [venv / "bin/pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--only-binary=:all:", "-r", ROOT / "requirements/py310.txt"],
                   check=True)
    subprocess.run([*pip, "--no-deps", ROOT], check=True, cwd=tmp_path)
    out = tmp_path / "out.mkv"
    r = subprocess.run([venv / "bin/edge-semvc", "encode", "demo://astronaut", out, "--frames",
                        "12"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12
