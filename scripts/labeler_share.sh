#!/usr/bin/env bash
# Labeler share of the pipeline's time, with and without temporal reuse (BENCHMARKS.md).
# Usage: scripts/labeler_share.sh [OUT]; prints a markdown table.
set -euo pipefail
OUT=${1:-bench-out/labeler-share}
mkdir -p "$OUT"
V=../shared/data/video
echo "| clip | labeler.interval | reuse | fps | labeler ms/frame (mean) | labeler share of wall time |"
echo "|---|---|---|---|---|---|"
for clip in foreman_cif.h264 street_pedestrians_vtest_768x576.avi drone_karma_coast_854x480.mp4 \
            road_traffic_signs_1080p.h264; do
  for k in 1 2 3 5; do
    for reuse in motion hold; do
      [ "$k" = 1 ] && [ "$reuse" = hold ] && continue
      .venv/bin/edge-semvc encode "$V/$clip" "$OUT/out.mp4" --stats-json "$OUT/s.json" \
        --set labeler.interval=$k --set labeler.reuse=$reuse >/dev/null
      .venv/bin/python - "$OUT/s.json" "$clip" "$k" "$reuse" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ms = s["stages"]["labeler"]["mean_ms"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4] if sys.argv[3] != '1' else '-'} | "
      f"{s['fps']:.1f} | {ms:.2f} | {100 * ms * s['fps'] / 1000:.0f} % |")
PY
    done
  done
done
