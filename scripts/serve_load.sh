#!/usr/bin/env bash
# How many cameras one box carries: `edge-semvc serve` with N looped cameras at 576p (the street
# clip: people in view, 10 fps) and 720p (the road clip scaled: vehicles, 25 fps)
# for SECONDS each, figures from `serve --stats-json` (BENCHMARKS.md, "serve").
#   scripts/serve_load.sh [OUT] [SECONDS] [COUNTS...]   (COUNTS default: 1 2 3 4 5)
set -euo pipefail
OUT=${1:-bench-out/serve}
SECONDS_PER_RUN=${2:-40}
COUNTS=("${@:3}"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 2 3 4 5)
SHARED=$(cd "$(dirname "$0")/../.." && pwd)/shared/data/video
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
FFMPEG=$($PY -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')
# 720p: the 1080p road clip scaled (x264 at high quality: the input, not what is measured)
[ -f "$OUT/road_720p.mp4" ] || "$FFMPEG" -loglevel error -y -i "$SHARED/road_traffic_signs_1080p.h264" \
  -vf scale=1280:720 -c:v libx264 -crf 16 -preset fast "$OUT/road_720p.mp4"
declare -A CLIP=([576p]="$SHARED/street_pedestrians_vtest_768x576.avi" [720p]="$OUT/road_720p.mp4")
for res in 576p 720p; do
  for n in "${COUNTS[@]}"; do
    # a resolution that dropped frames with fewer cameras is not tried with more
    if $PY - "$OUT" "$res" "$n" <<'PY'; then continue; fi
import glob, json, sys
out, res, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [json.load(open(p)) for p in glob.glob(f"{out}/serve_{res}_*.json")
        if int(p.rsplit("_", 1)[1][:-5]) < n]
sys.exit(0 if any(sum(c["dropped_frames"] for c in s["cameras"].values()) for s in runs)
         else 1)
PY
    cfg="$OUT/serve_${res}_${n}.yml"
    { echo "cameras:"
      for i in $(seq 1 "$n"); do echo "  cam$i: {input: \"file://${CLIP[$res]}\", loop: true}"; done
      echo "record: {dir: $OUT/rec_${res}_${n}, segment_seconds: 10}"; } > "$cfg"
    rm -rf "$OUT/rec_${res}_${n}"; mkdir -p "$OUT/rec_${res}_${n}"  # serve never makes it
    echo "== $res x $n" >&2
    $PY -m edge_semvc serve --config "$cfg" --seconds "$SECONDS_PER_RUN" \
      --stats-json "$OUT/serve_${res}_${n}.json" 2> "$OUT/serve_${res}_${n}.log"
  done
done
$PY - "$OUT" <<'PY'
import json, sys, glob, os
rows = []
def order(path):
    res, n = os.path.basename(path)[6:-5].split("_")
    return res, int(n)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "serve_*.json")), key=order):
    s = json.load(open(path))
    cams = s["cameras"].values()
    res, n = os.path.basename(path)[6:-5].split("_")
    fps = [c["fps"] for c in cams]
    drops = sum(c["dropped_frames"] for c in cams)
    frames = sum(c["frames"] for c in cams)
    p95 = max(c["latency_ms"]["end_to_end"]["p95"] or 0 for c in cams)
    roi = [1 - c["label_coverage"].get("background", 1) for c in cams]
    age = [c["label_staleness_frames"].get("nanodet_g", 0) for c in cams]
    budget = next(iter(cams))["label_budget"] or {}
    print(f"| {res} | {n} | {min(fps):.1f}-{max(fps):.1f} | {drops} of {drops + frames} "
          f"({100 * drops / max(drops + frames, 1):.1f} %) | {p95:.0f} | {s['cpu_percent']:.0f} "
          f"| {100 * min(roi):.1f}-{100 * max(roi):.1f} % | {budget.get('share')} "
          f"({budget.get('ms_per_frame')} ms) | {min(age):.1f}-{max(age):.1f} |")
PY
