"""python scratch/bench_exact_decode.py OUT.json (on a GPU): what the exact-token partial costs in decode.

K4V4, head_dim 128, 32 query / 8 KV heads, fp16, centred keys, one decode step, at the decode
benchmark's long shapes: device time of each call replayed in a CUDA graph (L2 flushed by
do_bench), for the compressed tokens alone, with 4 exact sinks, and with 4 sinks + a full window
(128 + 63 tokens); and the eager host time per call (a loop of calls, synchronised once).
"""
import json
import sys
import time

import torch
import triton

from tqgen import TurboQuant, attention
from tqgen.compressed import CompressedTensor
from tqgen.ops import decode_sm90
from tqgen.ops.exact_tokens import ExactTokens, attention_with_exact

torch.manual_seed(0)
HQ, HKV, D = 32, 8, 128
tq = TurboQuant(D, 4)
rows = []
for batch, n in ((1, 131072), (8, 32768), (32, 8192)):
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.float16)
    k = torch.randn(batch, HKV, n, D, device="cuda", dtype=torch.float16)
    v = torch.randn(batch, HKV, n, D, device="cuda", dtype=torch.float16)
    mu = k[:, :, :1024].float().mean(2, keepdim=True)
    kc = tq.compress(k - mu.half())
    kc = CompressedTensor(kc.packed, kc.norms, 4, D, kc.centroids, kc.rotation, mu)
    vc = tq.compress(v)
    out = torch.empty_like(q)
    cases = {"compressed only": None}
    for name, count in (("4 sinks", 4), ("4 sinks + 191 recent", 4 + 191)):
        ek = torch.randn(batch, HKV, count, D, device="cuda", dtype=torch.float16)
        ev = torch.randn(batch, HKV, count, D, device="cuda", dtype=torch.float16)
        cases[name] = ExactTokens(ek, ev, 4)
    for name, exact in cases.items():
        def call(exact=exact):
            if exact is None:
                return attention(q, kc, vc, out=out)
            return attention_with_exact(q, kc, vc, exact, out=out)

        call()
        torch.cuda.synchronize()
        # correctness against an fp32 torch reference over the decompressed middle
        keys = tq.decompress(kc, dtype=torch.float32)
        values = tq.decompress(vc, dtype=torch.float32)
        if exact is not None:
            keys = torch.cat([exact.keys[:, :, :4].float(), keys, exact.keys[:, :, 4:].float()], 2)
            values = torch.cat([exact.values[:, :, :4].float(), values, exact.values[:, :, 4:].float()], 2)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.float(), keys, values, enable_gqa=True)
        rel = ((out.float() - ref).norm() / ref.norm()).item()
        del keys, values
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()
            with torch.cuda.graph(graph, stream=stream):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        device_ms = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
        for _ in range(20):
            call()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            call()
        torch.cuda.synchronize()
        host_us = (time.perf_counter() - t0) / 200 * 1e6
        hopper = decode_sm90.supports(
            __import__("tqgen.spec", fromlist=["VariantSpec"]).VariantSpec(
                __import__("tqgen.spec", fromlist=["Family"]).Family.ATTN_DECODE, D, 4, 4, HQ // HKV, False, True),
            q, kc, vc, None)
        rows.append(dict(batch=batch, n_kv=n, case=name, device_ms=device_ms, eager_us_per_call=host_us,
                         rel_l2_vs_fp32=rel, hopper_path=hopper))
        print(f"B={batch} N={n} {name:22s} device {device_ms:.4f} ms  eager {host_us:6.1f} us/call  "
              f"rel {rel:.1e} hopper={hopper}", flush=True)
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d"), "rows": rows}, open(sys.argv[1], "w"), indent=1)
