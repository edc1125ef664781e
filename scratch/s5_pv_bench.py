"""GPU: vanilla prefill experiments (scratch/pv/fma.py: scale folded into exp2, optional TMA) vs the
generated kernel and SDPA, D=128, 32/8 heads, fp16, causal bottom-right.  python scratch/s5_pv_bench.py OUT.json"""
import json, sys, time
sys.path.insert(0, "scratch/pv")
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.nn.attention.bias import causal_lower_right
from triton.testing import do_bench
from tqgen.spec import VariantSpec, Family
from tqgen.ops.attention import prefill
import fma

rows = []
for B, nq, nkv in ((1, 8192, 8192), (4, 4096, 4096), (1, 1024, 32768)):
    torch.manual_seed(0)
    q = torch.randn(B, 32, nq, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(B, 8, nkv, 128, device="cuda", dtype=torch.float16)
    v = torch.randn(B, 8, nkv, 128, device="cuda", dtype=torch.float16)
    kw = {"is_causal": True} if nq == nkv else {"attn_mask": causal_lower_right(nq, nkv)}
    off = nkv - nq
    pairs = nq * nq / 2 if nq == nkv else sum(min(nkv, off + i + 1) for i in range(nq))
    flops = 4 * B * 32 * pairs * 128
    best = None
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        try:
            with sdpa_kernel([be]):
                f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
                ref = f(); ms = do_bench(f, warmup=10, rep=80, return_mode="median")
            if best is None or ms < best[0]: best = (ms, be.name)
        except Exception:
            pass
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw).float()
    spec = VariantSpec(Family.ATTN_PREFILL, 128, None, None, 4, True, False)
    cands = {"generated": lambda cfg, out: prefill(spec, dict(BLOCK_M=cfg[0], BLOCK_N=cfg[1], num_warps=cfg[2], num_stages=cfg[3]), q, k, v, out, 128 ** -0.5)}
    cands["fma"] = lambda cfg, out: fma.launch(q, k, v, out, *cfg, use_tma=False)
    cands["fma+tma"] = lambda cfg, out: fma.launch(q, k, v, out, *cfg, use_tma=True)
    for name, fn in cands.items():
        for cfg in ((128, 128, 8, 3), (128, 64, 8, 3)):
            out = torch.full_like(q, float("nan"))
            try:
                fn(cfg, out); torch.cuda.synchronize()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                ms = do_bench(lambda: fn(cfg, out), warmup=10, rep=80, return_mode="median")
            except Exception as e:
                rows.append(dict(B=B, nq=nq, nkv=nkv, impl=name, cfg=cfg, error=str(e)[:300])); print(name, cfg, "ERR", str(e)[:200], flush=True); continue
            r = dict(B=B, nq=nq, nkv=nkv, impl=name, cfg=cfg, ms=ms, tflops=flops / ms / 1e9, rel=err,
                     sdpa_ms=best[0], sdpa_backend=best[1], sdpa_tflops=flops / best[0] / 1e9, vs_sdpa=best[0] / ms)
            rows.append(r)
            print(f"B={B} nq={nq} nkv={nkv} {name:10s} {cfg} {r['tflops']:.0f} TF/s = {r['vs_sdpa']:.2f} SDPA ({best[1]} {r['sdpa_tflops']:.0f}) rel {err:.1e}", flush=True)
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d"), "rows": rows}, open(sys.argv[1], "w"), indent=1)
