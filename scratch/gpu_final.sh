#!/usr/bin/env bash
# End-of-session GPU checks (H200): bash scratch/gpu_final.sh 1  (tests + decode + compress), 2 (e2e)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tqgen_out}; mkdir -p "$OUT"; export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ "${1:-1}" = 1 ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
  python3 -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" | tee -a "$OUT/env.txt"
  timeout 300 python3 -m pytest -q -p no:randomly -m gpu tests/ -x --durations=5 2>&1 | grep -v DEBUG > "$OUT/pytest_gpu_full.txt"
  tail -15 "$OUT/pytest_gpu_full.txt"
  timeout 60 compute-sanitizer --tool memcheck python3 -c "
import torch; from tqgen import TurboQuant
for b in (2, 3, 4):
    for d in (64, 128, 256):
        tq = TurboQuant(d, b); x = torch.randn(2, 3, 77, d, device='cuda', dtype=torch.float16); tq.compress(x); tq.compress(x.float())
torch.cuda.synchronize(); print('compress memcheck done')" 2>&1 | tail -2
  timeout 120 python3 -m tqgen bench --suite compress --json "$OUT/compress.json" > "$OUT/compress.log" 2>&1; grep -E "^\| compress" "$OUT/compress.log"
  timeout 200 python3 -m tqgen bench --suite decode --json "$OUT/decode.json" > "$OUT/decode.log" 2>&1; grep -E "^\| decode" "$OUT/decode.log" | head -24
else
  timeout -s INT 420 python3 -m tqgen bench --suite e2e --json "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
  grep -E "^\| B=|^\| e2e" "$OUT/e2e.log" | head -20
fi
