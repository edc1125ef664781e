#!/usr/bin/env bash
# Session 5 GPU check 2: static-cache tests with tracebacks, the rest of the GPU tests, the exact-token
# decode cost (fused prologue), prefill and compress experiments, the prefill suite.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" | tee -a "$OUT/env.txt"
date -u | tee -a "$OUT/env.txt"
timeout 70 python3 scratch/bench_exact_decode.py "$OUT/exact_decode.json" 2>&1 | grep -E "^B=|Error|error" | tail -12
timeout -s INT 110 python3 -m pytest -q -p no:randomly tests/hf/test_gpu_static.py -x --tb=long -rf 2>&1 | grep -v DEBUG > "$OUT/pytest_static.txt"
tail -4 "$OUT/pytest_static.txt"; grep -n -E "Error|error|assert" "$OUT/pytest_static.txt" | head -12
timeout -s INT 150 python3 -m pytest -q -p no:randomly -m gpu tests/ --ignore=tests/hf/test_gpu_static.py -rf --tb=short --durations=6 2>&1 | grep -v DEBUG > "$OUT/pytest_gpu_rest.txt"
tail -14 "$OUT/pytest_gpu_rest.txt"
timeout 90 python3 scratch/s5_pv_bench.py "$OUT/pv_bench.json" 2>&1 | grep -E "^B=|ERR" | tail -40
timeout -s INT 110 python3 -m tqgen bench --suite prefill --json "$OUT/prefill.json" > "$OUT/prefill.log" 2>&1; grep -E "^\| " "$OUT/prefill.log" | head -40
timeout 40 python3 scratch/dv_bench.py 2>&1 | tail -8
timeout 40 python3 scratch/cv_bench.py cur nolo 2>&1 | tail -12; cp /tmp/cv_bench.json "$OUT/" 2>/dev/null
