#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md. Run from the project root after `make`.
# Usage: scripts/benchmarks.sh [OUT]   (default bench-out/; each part in its own folder)
# About 40 minutes on 2 cores; every part can also be run on its own (copy its command).
set -euo pipefail
OUT=${1:-bench-out}
V=../shared/data/video
M=../shared/models
B=".venv/bin/edge-semvc bench"
CLIPS="$V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
  $V/carphone_qcif_pristine.mp4 $V/drone_karma_coast_854x480.mp4 \
  $V/mobile_calendar_text_300x168.h264 $V/bikes_street_scene_cuts_640x272.mp4 \
  $V/foreman_cif.h264 $V/overhead_parking_cars_768x432.mp4"
YUV="$V/videoconf_2people_320x192_12fps_yuv420p.yuv --input-width 320 --input-height 192 --input-rate 12"

# Issue 2: one rate point, speed (best of 3) and ROI/background PSNR; street and road also with
# a detector labeler.
for c in "foreman_cif.h264 300k" "street_pedestrians_vtest_768x576.avi 800k" \
         "road_traffic_signs_1080p.h264 4M" "carphone_qcif_pristine.mp4 150k"; do
  set -- $c; $B $V/$1 --ladder $2 --no-vmaf --repeats 3 --out $OUT/i2/$1
done
for c in "street_pedestrians_vtest_768x576.avi 800k" "road_traffic_signs_1080p.h264 4M"; do
  set -- $c; $B $V/$1 --ladder $2 --no-vmaf --repeats 3 --config examples/yolox-fixture.yaml \
    --out $OUT/i2-yolox/$1
done

# Issue 3: every shared clip, default labeler, CBR ladder, FFmpeg baseline, YOLOX-nano F1.
$B $CLIPS --roi-model $M/yolox_nano.onnx --baseline ffmpeg --eval-every 2 --out $OUT/default
$B $YUV --roi-model $M/yolox_nano.onnx --baseline ffmpeg --out $OUT/default-yuv

# Issue 4: other labeler configurations (same ladder; F1 only where the labeler is not YOLOX).
$B $V/street_pedestrians_vtest_768x576.avi $V/bikes_street_scene_cuts_640x272.mp4 \
  $V/overhead_parking_cars_768x432.mp4 $V/foreman_cif.h264 \
  --config examples/deeplab-voc.yaml --roi-model $M/yolox_nano.onnx --eval-every 2 --no-vmaf \
  --out $OUT/deeplab
$B $V/mobile_calendar_text_300x168.h264 $V/road_traffic_signs_1080p.h264 $V/foreman_cif.h264 \
  --config examples/text.yaml --no-vmaf --out $OUT/text
$B $V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
  $V/bikes_street_scene_cuts_640x272.mp4 $V/overhead_parking_cars_768x432.mp4 \
  $V/drone_karma_coast_854x480.mp4 --config examples/yolox-fixture.yaml --baseline ffmpeg \
  --out $OUT/yolox

# Analytics accuracy at low rates, where detection starts to fail (F1 saturates near 1.0 on the
# default ladder): default and DeepLab labelers, YOLOX-nano as the independent detector.
LOW="--bpp 0.004 0.008 0.016 0.032 --roi-model $M/yolox_nano.onnx --no-vmaf"
ANALYTICS="$V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
  $V/bikes_street_scene_cuts_640x272.mp4 $V/overhead_parking_cars_768x432.mp4"
$B $ANALYTICS $LOW --out $OUT/low-default
$B $ANALYTICS $LOW --config examples/deeplab-voc.yaml --out $OUT/low-deeplab
