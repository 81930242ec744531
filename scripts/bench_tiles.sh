#!/bin/sh
# The tiles' recall and cost (BENCHMARKS.md, "The tiles' recall and cost"): each clip with the
# live budget of an idle camera (labeler.live_share 0.5), tiles on (default) and off.
set -e
OUT=${1:-bench-out/tiles}
V=${V:-../shared/data/video}
mkdir -p "$OUT"
for tiles in 1.5 0; do
  .venv/bin/python -m edge_semvc.bench.tiles --live-share 0.5 --set labeler.tiles=$tiles \
    --frames 150 --every 3 $V/street_pedestrians_vtest_768x576.avi
  .venv/bin/python -m edge_semvc.bench.tiles --live-share 0.5 --set labeler.tiles=$tiles \
    --frames 400 --every 3 $V/drone_karma_coast_854x480.mp4 $V/overhead_parking_cars_768x432.mp4
  .venv/bin/python -m edge_semvc.bench.tiles --live-share 0.5 --set labeler.tiles=$tiles \
    --frames 54 --every 2 $V/road_traffic_signs_1080p.h264
done > "$OUT/tiles.jsonl"
