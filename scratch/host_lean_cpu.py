"""CPU proxy of the eager decode host time: tqgen's dispatch + LeanKernel with a stubbed compiled launcher."""
import os, time
os.environ["TRITON_INTERPRET"] = "1"
import torch
import tqgen.ops.launch as launch
from tqgen.attention import attention
from tqgen.turboquant import TurboQuant

class FakeCompiled:
    function = 0; packed_metadata = None
    def run(self, *a): pass
class FakeParam:
    def __init__(self, dns): self.do_not_specialize = dns
class FakeJit:
    def __init__(self, real):
        dns = real.kwargs.get('do_not_specialize') or []; self.arg_names = real.arg_names; self.params = [FakeParam(n in dns) for n in real.arg_names]
    def __getitem__(self, grid):
        return lambda *a, **k: FakeCompiled()
orig = launch.loader.kernel
def fake_kernel(spec):
    lk = launch.LeanKernel(FakeJit(orig(spec))); lk.enabled = True; return lk
launch.kernel.cache_clear()
launch.kernel = __import__("functools").lru_cache(None)(fake_kernel)
import tqgen.ops.attention as opsatt; opsatt.kernel = launch.kernel
torch.cuda.current_device = lambda: 0
torch._C._cuda_getCurrentRawStream = lambda i: 0
B, H, HKV, D, N = 1, 32, 8, 128, 4096
q = torch.randn(B, H, 1, D, dtype=torch.float16)
tq = TurboQuant(D, 4)
kc = tq.empty(B, HKV, N, "cpu"); vc = tq.empty(B, HKV, N, "cpu")
out = torch.empty_like(q)
for _ in range(100): attention(q, kc, vc, out=out)
best = 1e9
for _ in range(7):
    t = time.perf_counter()
    for _ in range(1000): attention(q, kc, vc, out=out)
    best = min(best, (time.perf_counter()-t)/1000*1e6)
print(f"tqgen host time per decode attention() with stubbed launches: {best:.1f} us (best of 7 x 1000)")
import cProfile, pstats
cProfile.run("for _ in range(2000): attention(q, kc, vc, out=out)", "/tmp/prof2")
pstats.Stats("/tmp/prof2").sort_stats("tottime").print_stats(10)
