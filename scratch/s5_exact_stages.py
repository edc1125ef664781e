"""GPU: exact-token decode cost against the exact kernels' pipelining depth (NUM_STAGES) and slot rule."""
import json, os, sys, time
import torch, triton
from tqgen import TurboQuant, attention
from tqgen.compressed import CompressedTensor
from tqgen.ops import exact_tokens as et
from tqgen.ops.exact_tokens import ExactTokens, attention_with_exact
torch.manual_seed(0)
tq = TurboQuant(128, 4); rows = []
for batch, n in ((32, 8192), (8, 32768), (1, 131072)):
    q = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.float16)
    kc = tq.compress(torch.randn(batch, 8, n, 128, device="cuda", dtype=torch.float16))
    vc = tq.compress(torch.randn(batch, 8, n, 128, device="cuda", dtype=torch.float16))
    out = torch.empty_like(q)
    ex = {c: ExactTokens(torch.randn(batch, 8, c, 128, device="cuda", dtype=torch.float16),
                         torch.randn(batch, 8, c, 128, device="cuda", dtype=torch.float16), 4) for c in (4, 195)}
    def timed(fn):
        fn(); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph(); s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
            with torch.cuda.graph(g, stream=s):
                fn()
        torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
        return triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median")
    base = timed(lambda: attention(q, kc, vc, out=out))
    for stages in (1, 2, 3):
        et.NUM_STAGES = stages
        for c, e in ex.items():
            ms = timed(lambda e=e: attention_with_exact(q, kc, vc, e, out=out))
            rows.append(dict(batch=batch, n=n, exact=c, stages=stages, ms=ms, base_ms=base, cost=ms / base - 1))
            print(f"B={batch} N={n} exact={c:3d} stages={stages}: {ms:.4f} ms vs {base:.4f} (+{(ms/base-1)*100:.1f}%)", flush=True)
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d"), "rows": rows}, open(os.path.join(os.environ.get("OUT", "/tmp"), "exact_stages.json"), "w"), indent=1)
