#!/usr/bin/env bash
# Session 5 GPU check 3: every GPU test (static cache first, then what check 2 did not reach),
# the exact-token decode cost (one slot per 32 tokens), the prefill suite.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" | tee -a "$OUT/env.txt"
date -u | tee -a "$OUT/env.txt"
timeout -s INT 150 python3 -m pytest -q -p no:randomly -m gpu tests/hf/test_gpu_static.py --tb=short -rf --durations=3 2>&1 | grep -v DEBUG > "$OUT/pytest_static.txt"
tail -8 "$OUT/pytest_static.txt"; grep -E "^E " "$OUT/pytest_static.txt" | head -8
timeout -s INT 200 python3 -m pytest -q -p no:randomly -m gpu tests/ops/test_attention_prefill.py tests/ops/test_exact_tokens.py tests/ops/test_decode_sm90.py tests/ops/test_decompress.py tests/ops/test_compress.py tests/ops/test_compress_bounds.py tests/ops/test_scores.py tests/test_turboquant.py tests/hf/test_cache_exact_tokens.py tests/hf/test_gpu_generate.py tests/ops/test_attention_decode.py -rf --tb=short --durations=4 2>&1 | grep -v DEBUG > "$OUT/pytest_gpu_rest.txt"
tail -12 "$OUT/pytest_gpu_rest.txt"; grep -E "^E " "$OUT/pytest_gpu_rest.txt" | head -8
timeout 60 python3 scratch/bench_exact_decode.py "$OUT/exact_decode.json" 2>&1 | grep -E "^B=|Error|error" | tail -12
timeout -s INT 165 python3 -m tqgen bench --suite prefill --json "$OUT/prefill.json" > "$OUT/prefill.log" 2>&1; grep -E "^\| prefill" "$OUT/prefill.log" | head -14; grep -E "^\| (causal|chunk|non)" "$OUT/prefill.log" | grep -E "K4V4|K4 |K2V2" | head -10
