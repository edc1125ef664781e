#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" | tee -a "$OUT/env.txt"
date -u | tee -a "$OUT/env.txt"
timeout 100 python3 scratch/bench_exact_decode.py "$OUT/exact_decode.json" 2>&1 | tail -12
timeout 200 python3 -m pytest -q -p no:randomly -m gpu tests/ --durations=8 2>&1 | grep -v DEBUG > "$OUT/pytest_gpu_full.txt"
tail -25 "$OUT/pytest_gpu_full.txt"
timeout 40 compute-sanitizer --tool memcheck python3 -c "
import torch; from tqgen import TurboQuant
for b in (2, 3, 4):
    for d in (64, 128, 256):
        tq = TurboQuant(d, b); x = torch.randn(2, 3, 77, d, device='cuda', dtype=torch.float16); tq.compress(x); tq.compress(x.float())
torch.cuda.synchronize(); print('compress memcheck done')" 2>&1 | tail -2
timeout 60 python3 scratch/cv_bench.py cur pf 2>&1 | tail -12; cp /tmp/cv_bench.json "$OUT/" 2>/dev/null
timeout 180 python3 scratch/s5_prefill_sweep.py "$OUT/prefill_sweep.json" 2>&1 | tail -20
