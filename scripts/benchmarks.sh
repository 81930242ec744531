#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md. Run from the project root after `make`.
# Usage: scripts/benchmarks.sh [OUT] [PART...]   (default bench-out/, every part; each part in
# its own folder). About 90 minutes on 2 cores; every part can also be run on its own.
# Parts (in this order): cpu budget default low agreement reuse i2 yolox labelers storage
# backends gpu-cpu intra-refresh link loss i22
set -euo pipefail
OUT=${1:-bench-out}
shift || true
PARTS=${*:-cpu budget default low agreement reuse i2 yolox labelers storage backends gpu-cpu \
  intra-refresh link loss i22}
V=../shared/data/video
M=../shared/models
PY=.venv/bin/python
B=".venv/bin/edge-semvc bench"
CLIPS="$V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
  $V/carphone_qcif_pristine.mp4 $V/drone_karma_coast_854x480.mp4 \
  $V/mobile_calendar_text_300x168.h264 $V/bikes_street_scene_cuts_640x272.mp4 \
  $V/foreman_cif.h264 $V/overhead_parking_cars_768x432.mp4"
YUV="$V/videoconf_2people_320x192_12fps_yuv420p.yuv --input-width 320 --input-height 192 --input-rate 12"
OUTDOOR="$V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
  $V/overhead_parking_cars_768x432.mp4"
want() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"

# CPU time of the default semantic encode against --no-map at 720p and 1080p. The road clip is
# 54 frames: played forward and back 5 times (540 frames, no cuts) so start-up does not
# dominate; the 720p copy is scaled from it.
if want cpu; then
  FF=$($PY -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
  [ -f "$OUT/road_1080p_540.mp4" ] || $FF -v error -y -i $V/road_traffic_signs_1080p.h264 \
    -filter_complex "[0]split[a][b];[b]reverse[r];[a][r]concat=n=2:v=1,loop=loop=4:size=108:start=0" \
    -c:v libx264 -crf 14 -preset fast "$OUT/road_1080p_540.mp4"
  [ -f "$OUT/road_720p_540.mp4" ] || $FF -v error -y -i "$OUT/road_1080p_540.mp4" \
    -vf scale=1280:720 -c:v libx264 -crf 14 -preset fast "$OUT/road_720p_540.mp4"
  for b in 0.05 0.1; do
    $PY -m edge_semvc.bench.cpu "$OUT/road_720p_540.mp4" "$OUT/road_1080p_540.mp4" --repeats 2 \
      --set labeler.cpu_budget=$b --json "$OUT/cpu-$b.json" | tee "$OUT/cpu-$b.md"
  done
fi

# What each CPU budget buys on the outdoor clips, against running every model on every 2nd
# frame (no budget).
if want budget; then
  for b in 0.05 0.1; do
    $B $OUTDOOR --tune zerolatency --set labeler.cpu_budget=$b --out $OUT/budget-$b
  done
  $B $OUTDOOR --tune zerolatency --set labeler.cpu_budget=0 --set labeler.interval=2 \
    --out $OUT/budget-i2
fi

# Issue 2: one rate point, speed (best of 3) and ROI/background PSNR; street and road also with
# a YOLOX labeler.
if want i2; then
  for c in "foreman_cif.h264 300k" "street_pedestrians_vtest_768x576.avi 800k" \
           "road_traffic_signs_1080p.h264 4M" "carphone_qcif_pristine.mp4 150k"; do
    set -- $c; $B $V/$1 --ladder $2 --no-vmaf --repeats 3 --out $OUT/i2/$1
  done
  for c in "street_pedestrians_vtest_768x576.avi 800k" "road_traffic_signs_1080p.h264 4M"; do
    set -- $c; $B $V/$1 --ladder $2 --no-vmaf --repeats 3 --config examples/yolox-fixture.yaml \
      --out $OUT/i2-yolox/$1
  done
fi

# Issue 3: every shared clip, default labeler, CBR ladder, FFmpeg baseline, YOLOX-nano F1.
if want default; then
  $B $CLIPS --roi-model $M/yolox_nano.onnx --baseline ffmpeg --eval-every 2 --out $OUT/default
  $B $YUV --roi-model $M/yolox_nano.onnx --baseline ffmpeg --out $OUT/default-yuv
fi

# The YOLOX labeler on the outdoor clips (its F1 is judged by YOLOX itself: not shown).
if want yolox; then
  $B $V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
    $V/bikes_street_scene_cuts_640x272.mp4 $V/overhead_parking_cars_768x432.mp4 \
    $V/drone_karma_coast_854x480.mp4 --config examples/yolox-fixture.yaml --baseline ffmpeg \
    --out $OUT/yolox
fi

# Analytics at low rates, where detection starts to fail: bits to reach F1 0.9 / 0.95.
if want low; then
  LOW="--bpp 0.004 0.008 0.016 0.032 --roi-model $M/yolox_nano.onnx --no-vmaf --tune zerolatency"
  ANALYTICS="$V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
    $V/bikes_street_scene_cuts_640x272.mp4 $V/overhead_parking_cars_768x432.mp4"
  $B $ANALYTICS $LOW --out $OUT/low-default
  $B $ANALYTICS $LOW --set labeler.cpu_budget=0 --set labeler.interval=2 --out $OUT/low-i2
fi

# NanoDet against YOLOX-nano per input size; carried labels against every-frame labels.
if want agreement; then
  $PY -m edge_semvc.bench.agreement --json $OUT/agreement.json | tee $OUT/agreement.md
fi
if want reuse; then
  $PY -m edge_semvc.bench.reuse_eval --config examples/yolox-fixture.yaml --k 2 4 8 16 30 \
    --frames 250 --json $OUT/reuse-yolox.json | tee $OUT/reuse-yolox.md
  $PY -m edge_semvc.bench.reuse_eval --k 2 4 8 16 30 --frames 250 --json $OUT/reuse-default.json \
    | tee $OUT/reuse-default.md
fi

# Other labeler configurations (same ladder; F1 only where the labeler is not YOLOX).
if want labelers; then
  $B $V/street_pedestrians_vtest_768x576.avi $V/bikes_street_scene_cuts_640x272.mp4 \
    $V/overhead_parking_cars_768x432.mp4 $V/foreman_cif.h264 \
    --config examples/deeplab-voc.yaml --roi-model $M/yolox_nano.onnx --eval-every 2 --no-vmaf \
    --out $OUT/deeplab
  $B $V/mobile_calendar_text_300x168.h264 $V/road_traffic_signs_1080p.h264 $V/foreman_cif.h264 \
    --config examples/text.yaml --no-vmaf --out $OUT/text
fi

# Issue 12: the storage profile against what cameras ship (plain x264, CRF ladder, fixed 2 s GOP,
# every frame) on the static-camera clips and a 2-minute quiet car park made from the parking
# clip; what each idea adds: the map alone (2 s GOP), + long GOP, + dynamic frame rate.
if want storage; then
  QUIET=$OUT/quiet_parking_120s.mkv
  [ -f "$QUIET" ] || $PY -m edge_semvc.bench.static_clip $V/overhead_parking_cars_768x432.mp4 \
    "$QUIET" --start 105 --end 170 --seconds 120
  STATIC="$V/street_pedestrians_vtest_768x576.avi $V/overhead_parking_cars_768x432.mp4 $QUIET"
  S="--rc crf --ladder 32 28 24 20 --profile storage --roi-model $M/yolox_nano.onnx --eval-every 2"
  $B $STATIC $S --set encoder.storage.dynamic_gop=false --set encoder.storage.dynamic_fps=false \
    --set encoder.storage.gop_s=2 --out $OUT/storage-map
  $B $STATIC $S --set encoder.storage.dynamic_fps=false --out $OUT/storage-map-gop
  $B $STATIC $S --out $OUT/storage
fi

# Issue 13: x265 against x264, plain encodes, one thread each, CRF ladder.
if want backends; then
  $PY -m edge_semvc.bench.backends $V/foreman_cif.h264 $V/street_pedestrians_vtest_768x576.avi \
    $V/bikes_street_scene_cuts_640x272.mp4 $V/overhead_parking_cars_768x432.mp4 \
    $V/drone_karma_coast_854x480.mp4 --frames 60 --json $OUT/backends.json | tee $OUT/backends.md
fi

# Issue 13: the numpy map's time per frame size (the GPU side: scripts/gpu_check.sh on a GPU).
if want gpu-cpu; then
  $PY -m edge_semvc.bench.gpu_qp --sizes 720p,1080p,4k --cpu-only --json $OUT/gpu-cpu.json \
    | tee $OUT/gpu-cpu.md
fi

# Issue 18: intra refresh against periodic IDRs, peak-to-target over 100 ms windows.
if want intra-refresh; then
  $PY -m edge_semvc.bench.intra_refresh $V/street_pedestrians_vtest_768x576.avi \
    $V/drone_karma_coast_854x480.mp4 $V/road_traffic_signs_1080p.h264 --rates 500 1000 2000 \
    --json $OUT/intra-refresh.json | tee $OUT/intra-refresh.md
fi

# Issue 18: glass to glass on loopback at 720p30 (RTP, UDP and SRT; the RTSP server with two
# receivers) and the link story (a bitrate profile applied live, semantic vs x264, the received
# video judged).
if want link; then
  FF=$($PY -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
  [ -f "$OUT/road_720p30.mp4" ] || $FF -v error -y -i $V/road_traffic_signs_1080p.h264 \
    -filter_complex "[0]split[a][b];[b]reverse[r];[a][r]concat=n=2:v=1,loop=loop=4:size=108:start=0,scale=1280:720,setpts=N/30/TB" \
    -r 30 -c:v libx264 -crf 14 -preset fast "$OUT/road_720p30.mp4"
  for m in "" --no-map; do
    $PY -m edge_semvc.bench.link latency "$OUT/road_720p30.mp4" --seconds 17 $m --out "$OUT/link-rtp$m"
  done
  for r in gstreamer ffmpeg; do
    $PY -m edge_semvc.bench.link latency "$OUT/road_720p30.mp4" --seconds 17 --output rtsp \
      --receiver $r --out "$OUT/link-rtsp-$r"
  done
  for o in udp srt; do
    $PY -m edge_semvc.bench.link latency "$OUT/road_720p30.mp4" --seconds 17 --output $o \
      --out "$OUT/link-$o"
  done
  for r in ffmpeg gst gst-tcp; do  # follow_link from one RTSP viewer's receiver reports
    $PY -m edge_semvc.bench.rtsp_link $V/street_pedestrians_vtest_768x576.avi --receiver $r \
      | tee "$OUT/rtsp-follow-$r.txt"
  done
  $PY -m edge_semvc.bench.link story $V/street_pedestrians_vtest_768x576.avi \
    $V/road_traffic_signs_1080p.h264 $V/drone_karma_coast_854x480.mp4 --out "$OUT/link-story"
fi

# A link that loses packets: a seeded burst-loss relay between the RTP output and two real
# receivers, each way of putting the picture right (x264's GOP, IDRs, intra refresh, slices);
# the same over MPEG-TS/UDP; SRT through a link whose capacity changes.
if want loss; then
  for l in 1 0.1; do
    $PY -m edge_semvc.bench.loss $V/street_pedestrians_vtest_768x576.avi \
      $V/drone_karma_coast_854x480.mp4 --loss $l% --burst 2 --out "$OUT/loss-$l"
  done
  $PY -m edge_semvc.bench.loss $V/street_pedestrians_vtest_768x576.avi --loss 1% --burst 2 \
    --no-map --out "$OUT/loss-1-nomap"
  for l in 1 0.1; do  # MPEG-TS over UDP
    $PY -m edge_semvc.bench.loss $V/street_pedestrians_vtest_768x576.avi \
      $V/drone_karma_coast_854x480.mp4 --transport udp --loss $l% --burst 2 \
      --settings default gop --out "$OUT/udp-$l"
  done
  # SRT over a link that narrows and widens again: the rate following it, or not
  $PY -m edge_semvc.bench.loss $V/street_pedestrians_vtest_768x576.avi \
    $V/drone_karma_coast_854x480.mp4 --transport srt --loss 0 --bitrate 2M --seconds 45 \
    --capacity 2.5M@0,800k@15,1.5M@30 --settings default follow refresh refresh-follow \
    --out "$OUT/srt-capacity"
fi

# Issue 22: the defaults on the second halves of street, road and bikes (CBR, zerolatency and
# plain, two ladders, the independent ROI), with the file encode's labels and with a camera's
# label timing (recorded by bench.live_labels, replayed in every encode by --label-schedule).
if want i22; then
  I22="$V/street_pedestrians_vtest_768x576.avi $V/road_traffic_signs_1080p.h264 \
    $V/bikes_street_scene_cuts_640x272.mp4"
  $PY -m edge_semvc.bench.live_labels $I22 --start 50% --schedules $OUT/i22-schedules
  for tune in zerolatency plain; do
    T=$([ $tune = zerolatency ] && echo "--tune zerolatency" || true)
    for ladder in hi lo; do
      L=$([ $ladder = hi ] && echo "150k 300k 600k 1200k" || echo "40k 80k 160k 320k")
      $B $I22 --rc cbr $T --ladder $L --start 50% --eval-every 2 --out $OUT/i22-file-$tune-$ladder
      $B $I22 --rc cbr $T --ladder $L --start 50% --eval-every 2 \
        --label-schedule $OUT/i22-schedules --out $OUT/i22-live-$tune-$ladder
    done
  done
fi
