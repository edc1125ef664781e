#!/usr/bin/env bash
# GPU check of the compiled/static path, the lean eager path and the e2e contenders (H200, < 8 min).
# Writes under $OUT: pytest_gpu.txt, host_time.json, e2e.json, e2e.log; prints a short table last.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tqgen_out}; mkdir -p "$OUT"; export OUT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
echo "== 1. correctness: CUDA-graph replay = eager, compiled generate, opcheck, lean launches, reported bytes"
timeout 170 python -m pytest -q -x -p no:randomly tests/hf/test_gpu_static.py tests/ops/test_library.py \
  tests/ops/test_launch.py tests/hf/test_static_cache.py -k "not compiled_fullgraph" 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt"
echo "== 2. host time of one eager decode attention() call"
timeout 60 python scratch/gpu_issue10_host.py 2>&1 | tee "$OUT/host_time.txt"
echo "== 3. e2e suite (all contenders in one run)"
timeout -s INT 330 python -m tqgen bench --suite e2e --json "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
tail -25 "$OUT/e2e.log"
echo "== summary"
grep -E "passed|failed|error" "$OUT/pytest_gpu.txt" | tail -1
python scratch/gpu_issue10_table.py "$OUT/e2e.json" "$OUT/host_time.json"
