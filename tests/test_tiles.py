"""Tiles (labeler/tiles.py): a box detector also runs on overlapping crops of a frame much larger
than its input, each crop one more model for the budget. Real model, real drone clip."""
from __future__ import annotations

from itertools import islice

import pytest
from conftest import VIDEO

from edge_semvc.config import Config, LabelerConfig
from edge_semvc.labeler import Labeler
from edge_semvc.labeler.tiles import tile_rects
from edge_semvc.sources import open_source

DRONE = VIDEO / "drone_karma_coast_854x480.mp4"


def test_tiles_cover_the_frame_overlapping_and_only_when_it_is_much_larger():
    rects = tile_rects(854, 480, 512, 288, 1.5)  # NanoDet-g's input: the frame shrinks 1.67x
    assert len(rects) == 4
    assert min(r[0] for r in rects) == min(r[1] for r in rects) == 0.0
    assert max(r[2] for r in rects) == pytest.approx(1.0)
    assert max(r[3] for r in rects) == pytest.approx(1.0)
    assert rects[0][2] > rects[1][0] and rects[0][3] > rects[2][1]  # neighbours overlap
    assert tile_rects(640, 360, 512, 288, 1.5) == []  # 1.25x: not much larger
    assert tile_rects(854, 480, 512, 288, 0) == []  # off
    assert len(tile_rects(3840, 2160, 512, 288, 1.5)) == 16  # at most 4 a side


def _drone_frames(first: int, last: int):
    if not DRONE.exists():
        pytest.skip(f"{DRONE} is missing (../shared beside the project holds the clips)")
    src = open_source(str(DRONE))
    try:
        return list(islice(src.frames(), first, last))
    finally:
        src.close()


def test_tiles_find_the_drone_clip_s_small_cars_that_the_whole_view_misses():
    """Cars ~20-30 px wide at the end of the drone clip: NanoDet-g on the whole frame labels
    none, its four tiles label some. A live budget of a whole period with runs that 'cost'
    nothing (an injected thread clock) runs the whole view on every frame and the tiles in
    turn, one a frame."""
    frames = _drone_frames(352, 362)
    vehicles = {}
    for tiles in (1.5, 0.0):
        cfg = LabelerConfig(models=["nanodet_g"], parallel=False, tiles=tiles)
        lab = Labeler(cfg, Config().cache_dir(), log=lambda *_: None,
                      thread_clock=lambda: 0.0, live_share=1.0)
        maps = [lab.label(f) for f in frames]
        vehicles[tiles] = sum(int((m.labels == m.classes.index("vehicle")).sum()) for m in maps)
        names = list(lab.stats())
        if tiles:
            assert names == ["nanodet_g"] + [f"nanodet_g tile {i}/4" for i in range(1, 5)]
            # one tile a frame from the second frame on, in turn
            assert sum(lab.runs[1:]) == len(frames) - 1 and min(lab.runs[1:]) >= 2
            for _, tile in lab.models[1:]:
                x0, y0, x1, y1 = tile.crop(854, 480)
                assert x0 % 16 == y0 % 16 == 0 and (x1 % 16 == 0 or x1 == 854)
        else:
            assert names == ["nanodet_g"]
        assert maps[0].models == ["nanodet_g"]
    assert vehicles[0.0] == 0
    assert vehicles[1.5] >= 10


def test_no_tiles_in_a_file_encode_nor_on_a_frame_near_the_input_size():
    frames = _drone_frames(0, 2)
    for cpu_budget in (0.0, 0.5):  # none without a budget, none on a file's CPU budget
        lab = Labeler(LabelerConfig(models=["nanodet_g"], cpu_budget=cpu_budget,
                                    parallel=False), Config().cache_dir(), log=lambda *_: None)
        for f in frames:
            lab.label(f)
        assert list(lab.stats()) == ["nanodet_g"]
    lab = Labeler(LabelerConfig(models=["nanodet_g"], parallel=False, tiles=2.0),
                  Config().cache_dir(), log=lambda *_: None, live_share=0.5)
    for f in frames:  # 854x480 shrinks 1.67x into 512x288: under 2
        lab.label(f)
    assert list(lab.stats()) == ["nanodet_g"]


@pytest.mark.parametrize("key, value", [("labeler.tiles", "0.5"), ("labeler.tiles", "nan"),
                                        ("labeler.live_share", "1.5"),
                                        ("labeler.live_share", "-0.1")])
def test_bad_budget_and_tile_keys_are_refused_by_name(key, value):
    from edge_semvc.config import load_config
    from edge_semvc.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])
