#!/usr/bin/env bash
# Session 5 GPU check 4: exact-token decode cost with adaptive slots; static-cache bytes; exact-token GPU tests.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"; date -u | tee -a "$OUT/env.txt"
timeout 60 python3 scratch/bench_exact_decode.py "$OUT/exact_decode.json" 2>&1 | grep -E "^B=|Error|error" | tail -12
timeout -s INT 120 python3 -m pytest -q -p no:randomly -m gpu tests/hf/test_gpu_static.py::test_reported_bytes_match_cuda_allocations tests/ops/test_exact_tokens.py tests/hf/test_cache_exact_tokens.py tests/hf/test_gpu_generate.py -rf --tb=short 2>&1 | grep -v DEBUG > "$OUT/pytest.txt"
tail -5 "$OUT/pytest.txt"; grep -E "^E " "$OUT/pytest.txt" | head -8
