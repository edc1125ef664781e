#!/usr/bin/env bash
# GPU checks and benchmarks not yet run after this session's last changes (H100/H200, two calls):
#   bash scratch/gpu_next_session.sh 1   # GPU tests + decode suite   (~6 min)
#   bash scratch/gpu_next_session.sh 2   # e2e suite, all contenders  (~6 min)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tqgen_out}; mkdir -p "$OUT"; export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ "${1:-1}" = 1 ]; then
  timeout 200 python3 -m pytest -q -p no:randomly -m gpu tests/ops/test_decode_sm90.py tests/ops/test_attention_numerics.py \
    tests/ops/test_attention_decode.py tests/hf/test_gpu_static.py 2>&1 | tail -25 | tee "$OUT/pytest_gpu.txt"
  timeout 300 python3 -m tqgen bench --suite decode --json "$OUT/decode.json" --plot "$OUT/decode.png" > "$OUT/decode.log" 2>&1
  grep -E "^\| decode" "$OUT/decode.log" | head -40
else
  timeout -s INT 420 python3 -m tqgen bench --suite e2e --json "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
  grep -E "^\| B=" "$OUT/e2e.log" | head -16
fi
