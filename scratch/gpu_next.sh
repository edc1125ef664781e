#!/usr/bin/env bash
# Next session's first GPU call (H200): what session 5 could not rerun.
#   1. the GPU tests after the last exact-token changes (adaptive slots, 3-stage tile loop)
#   2. the decode suite (README's decode table predates exact sinks)
#   3. the e2e suite (predates sinks, the dequantise prefill route and the static-cache fixes)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"; date -u | tee -a "$OUT/env.txt"
timeout -s INT 150 python3 -m pytest -q -p no:randomly -m gpu tests/ops/test_exact_tokens.py tests/hf/test_cache_exact_tokens.py tests/hf/test_gpu_static.py -rf --tb=short 2>&1 | grep -v DEBUG > "$OUT/pytest.txt"; tail -4 "$OUT/pytest.txt"
timeout -s INT 120 python3 -m tqgen bench --suite decode --json "$OUT/decode.json" > "$OUT/decode.log" 2>&1; grep -E "^\| decode" "$OUT/decode.log" | head -20
timeout -s INT 300 python3 -m tqgen bench --suite e2e --json "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1; grep -E "^\| B=|^\| e2e" "$OUT/e2e.log" | head -20
