"""The field benchmark: sensors, the report's summaries, and short real runs of the pipeline.
(The camera-like pacing, sources/paced.py, is tested in test_paced.py.)"""
import argparse
import json
import os
import time

import av
import numpy as np
import pytest

from edge_semvc.bench import field, sensors
from edge_semvc.bench.field_report import power_summary, tegrastats_summary
from edge_semvc.cli import main as cli_main

# ---------------------------------------------------------------------------------- sensors


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_sensors_from_a_jetson_like_sysfs(tmp_path):
    _write(tmp_path / "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    _write(tmp_path / "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 1\n")
    for n, (kind, temp) in enumerate([("cpu-thermal", "47375"), ("gpu-thermal", "-256000"),
                                      ("cpu-thermal", "48000")]):
        _write(tmp_path / f"sys/class/thermal/thermal_zone{n}/type", kind + "\n")
        _write(tmp_path / f"sys/class/thermal/thermal_zone{n}/temp", temp + "\n")
    hw = tmp_path / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for ch, (label, mv, ma) in enumerate([("VDD_IN", 5000, 900), ("VDD_SOC", 5000, 200)], 1):
        _write(hw / f"in{ch}_label", label)
        _write(hw / f"in{ch}_input", str(mv))
        _write(hw / f"curr{ch}_input", str(ma))
    _write(hw / "in7_label", "sum of shunt voltages")  # no curr7_input: not a rail
    _write(hw / "in7_input", "12")
    iio = tmp_path / "sys/bus/i2c/drivers/ina3221x/7-0040/iio:device0"
    _write(iio / "rail_name_0", "POM_5V_IN")
    _write(iio / "in_power0_input", "2545")

    info = sensors.detect_jetson(str(tmp_path))
    assert info["available"] and "Orin Nano" in info["model"] and info["l4t"].startswith("R36")
    zones = sensors.find_thermal_zones(str(tmp_path))
    assert [z.name for z in zones] == ["cpu-thermal", "gpu-thermal", "cpu-thermal#2"]
    assert zones[0].read() == pytest.approx(47.375) and zones[1].read() is None  # -256: off
    rails = {r.name: r.read() for r in sensors.find_power_rails(str(tmp_path))}
    assert rails == {"VDD_IN": 4500.0, "VDD_SOC": 1000.0, "POM_5V_IN": 2545.0}


def test_not_a_jetson_says_why(tmp_path):
    info = sensors.detect_jetson(str(tmp_path))
    assert info == {"available": False, "reason": info["reason"]} and "not a Jetson" in \
        info["reason"]
    assert sensors.find_power_rails(str(tmp_path)) == [] == sensors.find_thermal_zones(str(tmp_path))


def test_parse_tegrastats_lines():
    orin = ("12-23-2024 22:54:11 RAM 3162/7620MB (lfb 4x2MB) SWAP 0/3810MB (cached 0MB) "
            "CPU [1%@729,3%@729,0%@729,0%@729,off,off] GR3D_FREQ 12% cpu@62.843C "
            "soc2@61.968C gpu@-256C tj@62.843C VDD_IN 3913mW/3922mW VDD_CPU_GPU_CV 598mW/598 "
            "VDD_SOC 1238mW/1237mW")
    r = sensors.parse_tegrastats(orin)
    assert r["power_mw"] == {"VDD_IN": 3913, "VDD_CPU_GPU_CV": 598, "VDD_SOC": 1238}
    assert r["temp_c"] == {"cpu": 62.843, "soc2": 61.968, "tj": 62.843}
    assert r["cpu_load"] == [1, 3, 0, 0, None, None] and r["gpu_load"] == 12
    assert r["ram_used_mb"] == 3162
    nano = ("RAM 1766/3964MB (lfb 197x4MB) SWAP 0/2048MB (cached 0MB) CPU [24%@1224,15%@1224] "
            "EMC_FREQ 0% GR3D_FREQ 0% PLL@21C CPU@25C POM_5V_IN 2545/2547 POM_5V_GPU 0/0")
    r = sensors.parse_tegrastats(nano)
    assert r["power_mw"] == {"POM_5V_IN": 2545, "POM_5V_GPU": 0}
    assert r["temp_c"] == {"PLL": 21, "CPU": 25}


def test_power_summary_integrates_energy(tmp_path):
    hw = tmp_path / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    _write(hw / "in1_label", "VDD_IN")
    _write(hw / "in1_input", "5000")  # mV
    _write(hw / "curr1_input", "1000")  # mA: 5 W
    rails = sensors.find_power_rails(str(tmp_path))
    now = [10.0]
    sampler = sensors.Sampler(0.5, [], rails, clock=lambda: now[0])
    for _ in range(5):  # 2 s of samples
        sampler.sample()
        now[0] += 0.5
    out = power_summary(sampler, rails, t0=10.0, frames=20)
    assert out["rails"]["VDD_IN"] == {"mean_mw": 5000.0, "max_mw": 5000.0, "energy_j": 10.0,
                                      "mj_per_frame": 500.0}


def test_tegrastats_reader_with_a_stand_in_binary(tmp_path, monkeypatch):
    """Three lines, then the stand-in idles until stopped (as tegrastats runs until killed)."""
    script = tmp_path / "tegrastats"
    script.write_text("#!/bin/sh\n[ \"$1\" = --interval ] || exit 2\nfor i in 1 2 3; do\n"
                      "echo 'RAM 3162/7620MB CPU [10%@729,20%@729] GR3D_FREQ 5% cpu@50.5C "
                      "VDD_IN 4000mW/4000mW'\ndone\nexec sleep 600\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    ticks = iter(range(100))
    t = sensors.Tegrastats(0.1, lambda: float(next(ticks))).start()
    deadline = time.monotonic() + 30  # (only against a hang; nothing below depends on time)
    while len(t.samples) < 3 and t.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    t.stop()
    assert [ts for ts, _ in t.samples] == [0.0, 1.0, 2.0]  # each line stamped on the clock
    summary = tegrastats_summary(t)
    assert summary["available"] and summary["lines"] == 3
    assert summary["power_mw"]["VDD_IN"]["mean"] == 4000
    assert summary["temp_c"]["cpu"]["max"] == 50.5 and summary["cpu_load_pct"]["mean"] == 15
    assert t.proc.poll() is not None  # stopped


# ------------------------------------------------------------------------- real pipeline runs


def _decoded_pts(path):
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def _check_report(r, out):
    for key in ("source", "frames", "fps", "latency_ms", "encoder", "encoder_delay", "cpu",
                "memory", "bitrate", "thermal", "jetson", "machine", "config", "pipeline"):
        assert key in r, key
    f = r["frames"]
    assert f["offered"] == f["delivered"] + f["dropped"] and f["delivered"] == f["encoded"] > 0
    assert r["complete"] and r["pipeline"]["frames"] == f["encoded"]
    e2e = r["latency_ms"]["end_to_end"]
    assert e2e["n"] == f["encoded"]
    assert 0 <= e2e["p50_ms"] <= e2e["p95_ms"] <= e2e["p99_ms"] <= e2e["max_ms"]
    for name, st in r["latency_ms"]["stages"].items():
        assert set(st) == {"mean_ms", "p50_ms", "p95_ms", "p99_ms"}, name
        if st["p50_ms"] is not None and st["p99_ms"] is not None:
            assert st["p50_ms"] <= st["p95_ms"] <= st["p99_ms"], name
    assert r["cpu"]["process_percent"] > 0 and r["cpu"]["cores"] >= 1
    assert r["memory"]["peak_rss_mb"] > 0
    assert r["jetson"]["available"] or r["jetson"]["reason"]
    assert r["machine"]["packages"]["edge_semvc"]
    pts = _decoded_pts(out)
    assert len(pts) == f["encoded"]
    assert all(b > a for a, b in zip(pts, pts[1:])), "output pts must increase strictly"
    return pts


def test_demo_realtime_two_seconds(tmp_path, capsys):
    out, js = tmp_path / "demo.mp4", tmp_path / "demo.json"
    assert cli_main(["field-bench", "demo://astronaut", str(out), "--seconds", "2", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    _check_report(r, out)
    assert r["source"]["realtime"] and r["source"]["ended_by"] == "seconds"
    assert 30 <= r["frames"]["offered"] <= 61  # 2 s at 30 fps (fewer if the demo slipped)
    assert r["duration_s"]["capture"] == pytest.approx(2.0, abs=0.1)
    assert 1.9 <= r["duration_s"]["measured"] <= 5  # + draining the queues and x264
    assert "end-to-end" in capsys.readouterr().out  # the summary


def test_shared_clip_cbr_bitrate_against_target(clip, tmp_path):
    path = clip("street_pedestrians_vtest_768x576.avi")
    out = tmp_path / "street.mkv"
    parser = argparse.ArgumentParser()
    field.add_arguments(parser)
    args = parser.parse_args([str(path), str(out), "--seconds", "2.2", "--bitrate", "800k",
                              "--rc", "cbr", "--json", str(tmp_path / "r.json")])
    assert field.run(args) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    _check_report(r, out)
    b = r["bitrate"]
    assert b["target_kbps"] == 800 and b["rc"] == "cbr" and b["seconds"] == 2
    assert len(b["per_second_kbps"]) == 2 and b["min_kbps"] <= b["mean_kbps"] <= b["max_kbps"]
    assert b["max_deviation_pct"] >= abs(b["mean_error_pct"])


def test_forced_slow_consumer_drops_frames(clip, tmp_path):
    path = clip("street_pedestrians_vtest_768x576.avi")  # cheap to decode: the source keeps up
    out, js = tmp_path / "fast.ts", tmp_path / "fast.json"
    # 100x real time: the 10 fps clip offered as a 1000 fps camera, far beyond this pipeline
    assert cli_main(["field-bench", str(path), str(out), "--seconds", "3", "--speed", "100", "--loop",
                       "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    pts = _check_report(r, out)
    assert r["frames"]["dropped"] > 0 and r["frames"]["drop_rate"] > 0.3
    assert r["fps"]["achieved"] < r["fps"]["offered"] <= r["fps"]["nominal"] == 1000
    assert r["source"]["passes"] >= 2  # looped (150 frames last 0.15 s at this speed; 3 s
    # leave a loaded box's decoder time for two passes)
    assert max(np.diff(pts)) > 1  # the gaps of the dropped frames are in the timestamps


def test_no_output_given_uses_a_temporary_file(tmp_path, capsys):
    assert cli_main(["field-bench", "demo://astronaut", "--seconds", "0.5", "--no-map"]) == 0
    r = json.loads(capsys.readouterr().out)  # JSON on stdout when --json is not given
    assert r["output"] == {"path": None, "kept": False, "bytes": r["output"]["bytes"]}
    assert r["pipeline"]["semantic"] is False and r["frames"]["encoded"] > 0


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli_main(["field-bench", "demo://astronaut", str(tmp_path / "o.mp4"), "--set",
                       "qp.nonsense=1"]) == 2
    assert cli_main(["field-bench", "demo://nothing", str(tmp_path / "o.mp4")]) == 2
    assert cli_main(["field-bench", "demo://astronaut", str(tmp_path / "o.avi")]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["field-bench", "demo://astronaut", "--speed", "0"])


def test_a_full_disk_still_writes_the_report(tmp_path, capsys):
    """The output on a full device: exit 3, and the report (written elsewhere) covers the run
    up to the error and names it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    out, js = tmp_path / "full.h264", tmp_path / "r.json"
    out.symlink_to("/dev/full")
    assert cli_main(["field-bench", "demo://astronaut", str(out), "--seconds", "0.5", "--no-map",
                       "--json", str(js)]) == 3
    r = json.loads(js.read_text())
    assert "No space left on device" in r["error"]
    err = capsys.readouterr().err
    assert "edge-semvc: error:" in err and "No space left on device" in err
    assert "Traceback" not in err
