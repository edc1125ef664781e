"""Prefill config sweep on a GPU: tqgen's generated vanilla prefill kernel vs SDPA, plus decompress cost.

python scratch/s5_prefill_sweep.py OUT.json
"""
import json, sys, time
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.nn.attention.bias import causal_lower_right
from triton.testing import do_bench
from tqgen.spec import VariantSpec, Family
from tqgen.ops.attention import prefill
from tqgen import TurboQuant

dev = "cuda"; HQ, HKV = 32, 8
rows = []
def sdpa_ms(q, k, v, causal, nq, nkv):
    best = None
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        kw = {}
        if causal:
            kw = {"is_causal": True} if nq == nkv else {"attn_mask": causal_lower_right(nq, nkv)}
        try:
            with sdpa_kernel([be]):
                f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
                f(); ms = do_bench(f, warmup=10, rep=60, return_mode="median")
            if best is None or ms < best[0]: best = (ms, be.name)
        except Exception as e:
            pass
    return best

CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s) for bm, bn, w, s in
           [(64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3),
            (64, 128, 4, 2), (256, 64, 8, 2), (128, 32, 4, 4)]]
SHAPES = [(1, 8192, 8192, True), (1, 8192, 8192, False), (4, 4096, 4096, True), (4, 4096, 4096, False),
          (1, 1024, 32768, True), (1, 4096, 32768, True)]
for D in (128, 64, 256):
    for B, nq, nkv, causal in SHAPES:
        if D != 128 and nq != nkv: continue
        torch.manual_seed(0)
        q = torch.randn(B, HQ, nq, D, device=dev, dtype=torch.float16)
        k = torch.randn(B, HKV, nkv, D, device=dev, dtype=torch.float16)
        v = torch.randn(B, HKV, nkv, D, device=dev, dtype=torch.float16)
        off = nkv - nq
        pairs = (nq * nq / 2 if nq == nkv else sum(min(nkv, off + i + 1) for i in range(nq))) if causal else nq * nkv
        flops = 4 * B * HQ * pairs * D
        s = sdpa_ms(q, k, v, causal, nq, nkv)
        kw = ({"is_causal": True} if nq == nkv else {"attn_mask": causal_lower_right(nq, nkv)}) if causal else {}
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True, **kw)
        spec = VariantSpec(Family.ATTN_PREFILL, D, None, None, HQ // HKV, causal, False)
        best = None
        for cfg in CONFIGS if D == 128 else CONFIGS[:6]:
            if D == 256 and cfg["BLOCK_M"] * cfg["BLOCK_N"] > 128 * 64: continue
            out = torch.full_like(q, float("nan"))
            try:
                prefill(spec, cfg, q, k, v, out, D ** -0.5)
                torch.cuda.synchronize()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                ms = do_bench(lambda: prefill(spec, cfg, q, k, v, out, D ** -0.5), warmup=10, rep=60, return_mode="median")
            except Exception as e:
                rows.append(dict(D=D, B=B, nq=nq, nkv=nkv, causal=causal, cfg=cfg, error=str(e)[:200])); continue
            r = dict(D=D, B=B, nq=nq, nkv=nkv, causal=causal, cfg=cfg, ms=ms, tflops=flops / ms / 1e9,
                     sdpa_ms=s[0], sdpa_backend=s[1], sdpa_tflops=flops / s[0] / 1e9, vs_sdpa=s[0] / ms, rel=err)
            rows.append(r)
            if best is None or ms < best["ms"]: best = r
        print(f"D={D} B={B} nq={nq} nkv={nkv} causal={causal}: best {best['cfg']} {best['tflops']:.0f} TF/s "
              f"vs SDPA {best['sdpa_tflops']:.0f} ({best['sdpa_backend']}) = {best['vs_sdpa']:.2f} rel {best['rel']:.1e}", flush=True)
        del q, k, v, ref
# decompress cost of a 32768-token cache (K and V, 8 heads, D=128, 4 bit)
tq = TurboQuant(128, 4)
x = torch.randn(1, HKV, 32768, 128, device=dev, dtype=torch.float16)
c = tq.compress(x)
for rot in (True,):
    ms = do_bench(lambda: tq.decompress(c, dtype=torch.float16), warmup=10, rep=100, return_mode="median")
    print(f"decompress 32768x8 D128 4bit (one of K/V): {ms*1e3:.1f} us", flush=True)
    rows.append(dict(decompress_us=ms * 1e3))
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d"), "rows": rows}, open(sys.argv[1], "w"), indent=1)
