#!/usr/bin/env bash
# The CUDA QP map's checks on a lent GPU machine, as one prepared run (the device tool: one
# command of at most 10 minutes; what it writes under $OUT comes back). From the project root:
#   scripts/gpu_check.sh prepare   here, once: real luma pairs into out/gpu_carry/frames.npz
#                                  (PyAV and ../shared/data/video; the GPU machine has neither)
#   bash scripts/gpu_check.sh      there, with carry ["out/gpu_carry"]; python3 there must have
#                                  CuPy, numpy, scipy, pyyaml and pytest (the H200 image has)
# It prints the machine and library versions, runs tests/test_cuda_qp.py with the GPU tests,
# then the timing at 720p, 1080p and 4K; writes $OUT/gpu_check.log, $OUT/pytest.xml and
# $OUT/gpu_qp.json. Exit status 0 only when both passed. Takes about 2-3 minutes.
set -u
cd "$(dirname "$0")/.." || exit 2
if [ "${1:-}" = prepare ]; then
  exec .venv/bin/python -m edge_semvc.bench.gpu_qp --save-frames out/gpu_carry/frames.npz
fi
OUT=${OUT:-out/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

main() {
  set -x
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  export EDGE_SEMVC_REQUIRE_GPU=1  # no GPU or no real frames: the tests fail instead of skipping
  if [ -f out/gpu_carry/frames.npz ]; then
    export EDGE_SEMVC_REAL_FRAMES="$PWD/out/gpu_carry/frames.npz"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory,clocks.max.sm \
    --format=csv
  nvcc --version | tail -n 2
  lscpu | grep 'Model name'
  timeout 90 "$PY" - <<'PYEOF'
import platform, numpy, scipy
print("python", platform.python_version(), "numpy", numpy.__version__, "scipy", scipy.__version__)
import cupy
rt = cupy.cuda.runtime
print("cupy", cupy.__version__, "runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion(),
      "devices", rt.getDeviceCount())
from edge_semvc.qp.cuda import gpu_unavailable_reason, nvrtc
print("nvrtc", nvrtc.library_path(), nvrtc.version(), nvrtc.supported_archs())
print("qp.device cuda:", gpu_unavailable_reason("cupy") or "usable")
PYEOF
  timeout 240 "$PY" -m pytest tests/test_cuda_qp.py -o addopts= -p no:cacheprovider -v -rs \
    --tb=short --junitxml="$OUT/pytest.xml"
  local tests=$?
  timeout 150 "$PY" -m edge_semvc.bench.gpu_qp --sizes 720p,1080p,4k --json "$OUT/gpu_qp.json"
  local timing=$?
  set +x
  echo "gpu_check: tests exit $tests, timing exit $timing"
  [ "$tests" -eq 0 ] && [ "$timing" -eq 0 ]
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
