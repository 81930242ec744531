"""bench.anchor: real bench runs in two x264 modes set against one run's `--no-map`."""
import json

import pytest
from conftest import shared_file

from edge_semvc.bench import anchor
from edge_semvc.bench.metrics import roi_data_note
from edge_semvc.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three short real bench runs on one clip: zerolatency (the anchor), plain x264 (a
    lookahead and mb-tree: another `--no-map`), and zerolatency over fewer frames."""
    root = tmp_path_factory.mktemp("anchor")
    source = str(shared_file("data", "video", "carphone_qcif_pristine.mp4"))
    out = {}
    for name, frames, extra in (("zl", "24", ["--tune", "zerolatency"]), ("plain", "24", []),
                                ("short", "12", ["--tune", "zerolatency"])):
        out[name] = root / name
        assert main(["bench", source, "--ladder", "60k", "150k", "--frames", frames, "--no-vmaf",
                     "--roi-model", "none", "--set", "encoder.threads=1", *extra,
                     "--out", str(out[name])]) == 0
    return out


def _rows(runs, *names):
    clips = anchor.anchor_clips([runs["zl"]])
    return {name: {r["encoder"]: r["bd"] for r in anchor.against(clips, anchor.load(runs[name]))}
            for name in names}


def test_a_run_against_its_own_anchor_gives_bench_s_own_figures(runs):
    rows = _rows(runs, "zl")["zl"]
    (clip,) = anchor.load(runs["zl"])["clips"]
    assert rows["semantic"] == clip["bd_rate"]["semantic_vs_baseline"]
    assert all(v["percent"] == pytest.approx(0, abs=1e-6) for v in rows["baseline"].values()
               if v["percent"] is not None)


def test_another_mode_s_baseline_and_semantic_are_set_against_the_anchor(runs, capsys):
    rows = _rows(runs, "plain")["plain"]
    assert rows["baseline"]["psnr"]["percent"] != pytest.approx(0, abs=0.01)  # another x264
    (clip,) = anchor.load(runs["plain"])["clips"]
    own = clip["bd_rate"]["semantic_vs_baseline"]["psnr"]["percent"]
    assert rows["semantic"]["psnr"]["percent"] != pytest.approx(own, abs=0.01)
    assert anchor.main(["--anchor", str(runs["zl"]), str(runs["plain"])]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| run | clip | encoder | psnr_roi BD % |")
    assert f"| {runs['plain']} | carphone_qcif_pristine.mp4 | semantic |" in table


def test_runs_over_other_frames_or_clips_are_refused(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        anchor.main(["--anchor", str(runs["zl"]), str(runs["short"])])
    assert stop.value.code == 2
    assert "frames 12 here, 24 in the anchor run" in capsys.readouterr().err
    with pytest.raises(anchor.Mismatch, match="in more than one anchor run"):
        anchor.anchor_clips([runs["zl"], runs["plain"]])
    other = json.loads((runs["zl"] / "results.json").read_text())
    other["clips"][0]["clip"] = "elsewhere.mp4"
    (tmp_path / "results.json").write_text(json.dumps(other))
    with pytest.raises(anchor.Mismatch, match="elsewhere.mp4: in no anchor run"):
        anchor.against(anchor.anchor_clips([runs["zl"]]), anchor.load(tmp_path))
    with pytest.raises(anchor.Mismatch, match="not a bench result"):
        anchor.load(tmp_path / "missing")
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(anchor.Mismatch, match="no list of clips"):
        anchor.load(tmp_path)


def test_an_roi_that_is_not_the_anchor_s_is_left_out_with_a_note(runs, tmp_path):
    other = json.loads((runs["plain"] / "results.json").read_text())
    other["clips"][0]["roi_fraction_own"] = 0.5  # as if its own models had labelled otherwise
    (tmp_path / "results.json").write_text(json.dumps(other))
    clips = anchor.anchor_clips([runs["zl"]])
    for row in anchor.against(clips, anchor.load(tmp_path)):
        assert row["bd"]["psnr_roi_own"] == {
            "percent": None, "note": f"the ROI covers 0.5 of the frame here, "
            f"{clips['carphone_qcif_pristine.mp4']['roi_fraction_own']} in the anchor"}
        assert row["bd"]["psnr"]["percent"] is not None


def test_too_little_roi_in_the_anchor_is_bench_s_own_verdict_with_its_thresholds(runs, tmp_path):
    """The anchor's ROI is judged by bench's rule (`metrics.roi_data_note`) with the anchor
    run's thresholds, so a run can ask for more than bench's default."""
    results = json.loads((runs["zl"] / "results.json").read_text())
    results["settings"]["roi_min_mbs"] = 10_000  # more macroblocks than the clip has
    (tmp_path / "results.json").write_text(json.dumps(results))
    cov = results["clips"][0]["roi_coverage_own"]  # the runs have the own models' ROI only
    for row in anchor.against(anchor.anchor_clips([tmp_path]), anchor.load(runs["plain"])):
        assert row["bd"]["psnr_roi_own"] == {"percent": None, "note": roi_data_note(
            cov["mbs_per_frame"], cov["frame_fraction"], 10_000,
            results["settings"]["roi_min_frames"])}
        assert row["bd"]["psnr"]["percent"] is not None


def test_a_run_stopped_before_its_first_point_is_refused(runs, tmp_path):
    """A bench stopped before any rate point was judged writes a results.json without clips;
    set against an anchor it printed an empty table and exit 0."""
    stopped = json.loads((runs["zl"] / "results.json").read_text())
    stopped.update(clips=[], complete=False, interrupted="interrupted (SIGINT): 0 of 1 clips "
                   "complete")
    (tmp_path / "results.json").write_text(json.dumps(stopped))
    with pytest.raises(anchor.Mismatch, match=r"no clip was judged \(interrupted \(SIGINT\)"):
        anchor.load(tmp_path)
