"""GPU experiment: Gluon K4V4 decode correctness (fp16/bf16), split-policy sweep, breakdown, vs SDPA.

python scratch/gpu_decode_exp.py [check|bench|small]   (OUT=dir for JSON)
"""
import json, math, os, sys, time
import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, os.getcwd())
import tqgen
from tqgen import TurboQuant, attention
from tqgen.ops import decode_sm90

OUT = os.environ.get("OUT", "/tmp")
dev = "cuda"
tq = TurboQuant(128, 4)
rows_out = []


def ref_attention(q, kc, vc, causal=False, keep=None):
    k = tq.decompress(kc, rotated=False, dtype=torch.float32).double()
    v = tq.decompress(vc, rotated=False, dtype=torch.float32).double()
    qd = q.double()
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, 1); v = v.repeat_interleave(g, 1)
    s = qd @ k.transpose(-1, -2) / math.sqrt(128)
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        i = torch.arange(nq, device=q.device)[:, None]; j = torch.arange(nk, device=q.device)[None, :]
        s = s.masked_fill(j > i + nk - nq, float("-inf"))
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def check():
    torch.manual_seed(1)
    bad = 0
    cases = []
    for dt in (torch.float16, torch.bfloat16):
        for (B, hkv, g, nq, n, causal) in [(1, 2, 4, 1, 1, False), (2, 2, 4, 1, 7, False), (1, 1, 1, 1, 64, False),
                                           (3, 2, 2, 1, 100, True), (1, 2, 8, 1, 1000, False), (2, 1, 16, 1, 4097, False),
                                           (1, 2, 4, 2, 333, False), (1, 1, 4, 4, 129, False), (2, 8, 4, 1, 32768, False),
                                           (1, 2, 8, 2, 65, False), (1, 8, 4, 1, 131072, True)]:
            q = torch.randn(B, hkv * g, nq, 128, device=dev, dtype=dt)
            k = torch.randn(B, hkv, n, 128, device=dev, dtype=dt)
            v = torch.randn(B, hkv, n, 128, device=dev, dtype=dt)
            kc, vc = tq.compress(k), tq.compress(v)
            spec_ok = decode_sm90.supports(tqgen.spec.VariantSpec(tqgen.spec.Family.ATTN_DECODE, 128, 4, 4, g, causal, True), q, kc, vc, None)
            out = torch.full_like(q, float("nan"))
            attention(q, kc, vc, is_causal=causal, out=out)
            ref = ref_attention(q, kc, vc, causal)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            finite = bool(torch.isfinite(out).all())
            ok = finite and err < (2e-3 if dt == torch.float16 else 1.2e-2) and spec_ok
            bad += not ok
            r = dict(kind="check", dtype=str(dt), B=B, hkv=hkv, g=g, nq=nq, n=n, causal=causal, gluon=spec_ok, err=err, finite=finite, ok=ok)
            rows_out.append(r); print(json.dumps(r), flush=True)
    # key-padding masks [B, 1, 1, N] (the static cache / padded batch form), incl. fully masked splits
    for dt in (torch.float16, torch.bfloat16):
        for (B, hkv, g, n) in [(2, 2, 4, 700), (3, 8, 4, 32768), (1, 2, 16, 5000)]:
            q = torch.randn(B, hkv * g, 1, 128, device=dev, dtype=dt)
            kc = tq.compress(torch.randn(B, hkv, n, 128, device=dev, dtype=dt)); vc = tq.compress(torch.randn(B, hkv, n, 128, device=dev, dtype=dt))
            keep = torch.rand(B, 1, 1, n, device=dev) > 0.3
            keep[0, :, :, n // 3:] = False  # later splits of batch 0 see no key at all
            keep[:, :, :, 0] = True
            spec = tqgen.spec.VariantSpec(tqgen.spec.Family.ATTN_DECODE, 128, 4, 4, g, False, True)
            gl_ok = decode_sm90.supports(spec, q, kc, vc, keep.expand(B, hkv * g, 1, n))
            out = torch.full_like(q, float("nan"))
            attention(q, kc, vc, attention_mask=keep, out=out)
            ref = ref_attention(q, kc, vc, keep=keep)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            ok = bool(torch.isfinite(out).all()) and err < (2e-3 if dt == torch.float16 else 1.2e-2) and gl_ok
            bad += not ok
            r = dict(kind="check_mask", dtype=str(dt), B=B, g=g, n=n, gluon=gl_ok, err=err, ok=ok); rows_out.append(r); print(json.dumps(r), flush=True)
    # large V norms in fp16 (entries ~2.6e4)
    q = torch.randn(1, 4, 1, 128, device=dev, dtype=torch.float16)
    k = torch.randn(1, 2, 64, 128, device=dev, dtype=torch.float16)
    v = (torch.randn(1, 2, 64, 128, device=dev) * 6000).half()
    kc, vc = tq.compress(k), tq.compress(v)
    out = attention(q, kc, vc); ref = ref_attention(q, kc, vc)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    r = dict(kind="check_bignorm", err=err, finite=bool(torch.isfinite(out).all())); rows_out.append(r); print(json.dumps(r))
    bad += not (r["finite"] and err < 2e-3)
    # CUDA graph replay
    q = torch.randn(1, 32, 1, 128, device=dev, dtype=torch.float16)
    kc = tq.compress(torch.randn(1, 8, 4096, 128, device=dev, dtype=torch.float16)); vc = tq.compress(torch.randn(1, 8, 4096, 128, device=dev, dtype=torch.float16))
    out = torch.empty_like(q)
    attention(q, kc, vc, out=out); torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        attention(q, kc, vc, out=out)
    q.copy_(torch.randn_like(q)); gr.replay(); torch.cuda.synchronize()
    ref = ref_attention(q, kc, vc)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    t_graph = do_bench(gr.replay, return_mode="median")
    kk = torch.randn(1, 8, 4096, 128, device=dev, dtype=torch.float16)
    g2 = torch.cuda.CUDAGraph(); o2 = torch.empty_like(q)
    o2.copy_(F.scaled_dot_product_attention(q, kk, kk, enable_gqa=True)); torch.cuda.synchronize()
    with torch.cuda.graph(g2):
        o2.copy_(F.scaled_dot_product_attention(q, kk, kk, enable_gqa=True))
    t_sdpa_graph = do_bench(g2.replay, return_mode="median")
    r = dict(kind="graph", err=err, ms=t_graph, sdpa_graph_ms=t_sdpa_graph); rows_out.append(r); print(json.dumps(r))
    bad += not err < 2e-3
    print("CHECK FAILURES:", bad, flush=True)
    return bad


def copy_bw():
    n = 1 << 30
    x = torch.empty(n, dtype=torch.uint8, device=dev).random_(); y = torch.empty_like(x)
    bw = 2 * n / (do_bench(lambda: y.copy_(x), return_mode="median") * 1e-3) / 1e12
    del x, y
    return bw


def bench():
    bw = copy_bw()
    print(f"{torch.cuda.get_device_name()} copy {bw:.2f} TB/s triton {triton.__version__} torch {torch.__version__}", flush=True)
    rows_out.append(dict(kind="env", gpu=torch.cuda.get_device_name(), copy_tbps=bw, triton=triton.__version__, torch=torch.__version__, date=time.strftime("%Y-%m-%d")))
    shapes = [(1, 131072), (8, 32768), (32, 8192), (1, 4096)]
    sweep = [(w, mt, st) for w in (2, 4, 8, 16) for mt in (256,) for st in (4,)] + [(8, 128, 4), (8, 512, 4), (8, 256, 3), (4, 512, 4)]
    for B, N in shapes:
        torch.manual_seed(0)
        q = torch.randn(B, 32, 1, 128, device=dev, dtype=torch.float16)
        k = torch.randn(B, 8, N, 128, device=dev, dtype=torch.float16); v = torch.randn_like(k)
        t_sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), return_mode="median")
        kc, vc = tq.compress(k), tq.compress(v)
        del k, v
        byts = 2 * (kc.packed.numel() + kc.norms.numel() * 4)
        out = torch.empty_like(q)
        saved = (decode_sm90.SPLIT_WAVES, decode_sm90.SPLIT_MIN_TOKENS, decode_sm90.STAGES)
        for w, mt, st in sweep:
            decode_sm90.SPLIT_WAVES, decode_sm90.SPLIT_MIN_TOKENS, decode_sm90.STAGES = w, mt, st
            fn = lambda: attention(q, kc, vc, out=out)
            fn(); torch.cuda.synchronize()
            t = do_bench(fn, return_mode="median")
            r = dict(kind="bench", B=B, N=N, waves=w, min_tokens=mt, stages=st, ms=t, sdpa_ms=t_sdpa, x_sdpa=t_sdpa / t, frac_bw=byts / (t * 1e-3) / (bw * 1e12))
            rows_out.append(r); print(json.dumps(r), flush=True)
        decode_sm90.SPLIT_WAVES, decode_sm90.SPLIT_MIN_TOKENS, decode_sm90.STAGES = saved
        # old Triton path
        sup = decode_sm90.supports
        decode_sm90.supports = lambda *a, **kw: False
        fn = lambda: attention(q, kc, vc, out=out)
        fn(); torch.cuda.synchronize()
        t_old = do_bench(fn, return_mode="median")
        decode_sm90.supports = sup
        r = dict(kind="bench_triton", B=B, N=N, ms=t_old, sdpa_ms=t_sdpa, x_sdpa=t_sdpa / t_old); rows_out.append(r); print(json.dumps(r), flush=True)
        # breakdown with default policy: time prologue+main only by skipping the reduce
        del kc, vc, q
        torch.cuda.empty_cache()
    json.dump(rows_out, open(os.path.join(OUT, "decode_exp.json"), "w"), indent=1)
    print("| B | N | waves | min | st | ms | x SDPA | %bw |")
    for r in rows_out:
        if r["kind"] == "bench":
            print(f"| {r['B']} | {r['N']} | {r['waves']} | {r['min_tokens']} | {r['stages']} | {r['ms']:.4f} | {r['x_sdpa']:.2f} | {100*r['frac_bw']:.0f}% |")
        if r["kind"] == "bench_triton":
            print(f"| {r['B']} | {r['N']} | triton | | | {r['ms']:.4f} | {r['x_sdpa']:.2f} | |")


def graph_time(fn, warm=True):
    """Device time of fn replayed in a CUDA graph (median of do_bench over replays)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(); fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return do_bench(g.replay, return_mode="median")


def gbench():
    from tqgen.ops import attention as ops
    from tqgen.gluon.query_planes import rotate_query_planes
    bw = copy_bw()
    env = dict(kind="env", gpu=torch.cuda.get_device_name(), copy_tbps=bw, triton=triton.__version__, torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    rows_out.append(env); print(json.dumps(env), flush=True)
    shapes = [(1, 131072), (8, 32768), (32, 8192), (1, 4096)]
    pol = [(2, 256), (4, 256), (8, 256), (16, 256)]
    if os.environ.get("NOCAP"):
        decode_sm90.MAXNREG[(8, False)] = None
    for B, N in shapes:
        torch.manual_seed(0)
        q = torch.randn(B, 32, 1, 128, device=dev, dtype=torch.float16)
        k = torch.randn(B, 8, N, 128, device=dev, dtype=torch.float16); v = torch.randn_like(k)
        sd = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        t_sdpa = do_bench(sd, return_mode="median")
        t_sdpa_g = graph_time(sd)
        kc, vc = tq.compress(k), tq.compress(v)
        del k, v
        byts = 2 * (kc.packed.numel() + kc.norms.numel() * 4)
        out = torch.empty_like(q)
        for w, mt in pol:
            decode_sm90.SPLIT_WAVES, decode_sm90.SPLIT_MIN_TOKENS = w, mt
            fn = lambda: attention(q, kc, vc, out=out)
            t_e = do_bench(fn, return_mode="median")
            t_g = graph_time(fn)
            # partials only (prologue + main kernel), same plan
            spec = tqgen.spec.VariantSpec(tqgen.spec.Family.ATTN_DECODE, 128, 4, 4, 4, False, True)
            plan = ops.split_plan(B * 8, N, 64, mt, ops.sm_count(q.device), w)
            ws = ops.workspace(q.device, B * 32, 128, plan.capacity)
            t_part = graph_time(lambda: decode_sm90.launch_partials(spec, q, kc, vc, 1.4426950408889634 / math.sqrt(128), plan, ws))
            planes = decode_sm90._q_planes(q.device, q.dtype, B * 8, 8)
            t_pro = graph_time(lambda: rotate_query_planes[(B * 8, 2)](q, *q.stride(), decode_sm90._pi_planes(kc.rotation), planes, 8, 1, GROUP=4, M=8, D=128, num_warps=4))
            r = dict(kind="gbench", B=B, N=N, waves=w, min_tokens=mt, splits=plan.num_splits, eager_ms=t_e, graph_ms=t_g, partials_ms=t_part,
                     prologue_ms=t_pro, main_ms=t_part - t_pro, reduce_ms=t_g - t_part, sdpa_ms=t_sdpa, sdpa_graph_ms=t_sdpa_g,
                     x_sdpa_graph=t_sdpa_g / t_g, x_sdpa_main=t_sdpa_g / (t_part - t_pro), frac_bw_graph=byts / (t_g * 1e-3) / (bw * 1e12))
            rows_out.append(r); print(json.dumps(r), flush=True)
        # sign-magnitude K words
        sys.path.insert(0, os.path.join(os.getcwd(), "scratch"))
        from smag import smag_key_asm, to_smag
        from tqgen.compressed import CompressedTensor
        decode_sm90.SPLIT_WAVES = 2 if B == 1 else 8
        ks = CompressedTensor(to_smag(kc.packed), kc.norms, 4, 128, kc.centroids, kc.rotation)
        orig = decode_sm90._kernel_sources
        decode_sm90._kernel_sources = lambda tab: (smag_key_asm(tab), orig(tab)[1])
        o3 = torch.full_like(q, float("nan"))
        attention(q, ks, vc, out=o3); torch.cuda.synchronize()
        o_ref = torch.empty_like(q)
        decode_sm90._kernel_sources = orig
        attention(q, kc, vc, out=o_ref)
        decode_sm90._kernel_sources = lambda tab: (smag_key_asm(tab), orig(tab)[1])
        diff = ((o3.float() - o_ref.float()).norm() / o_ref.float().norm()).item()
        spec = tqgen.spec.VariantSpec(tqgen.spec.Family.ATTN_DECODE, 128, 4, 4, 4, False, True)
        plan = ops.split_plan(B * 8, N, 64, 256, ops.sm_count(q.device), decode_sm90.SPLIT_WAVES)
        ws = ops.workspace(q.device, B * 32, 128, plan.capacity)
        t_part = graph_time(lambda: decode_sm90.launch_partials(spec, q, ks, vc, 1.4426950408889634 / math.sqrt(128), plan, ws))
        t_g = graph_time(lambda: attention(q, ks, vc, out=o3))
        decode_sm90._kernel_sources = orig
        r = dict(kind="smag", B=B, N=N, waves=decode_sm90.SPLIT_WAVES, diff_vs_std=diff, partials_ms=t_part, graph_ms=t_g, x_sdpa_graph=t_sdpa_g / t_g)
        rows_out.append(r); print(json.dumps(r), flush=True)
        decode_sm90.SPLIT_WAVES, decode_sm90.SPLIT_MIN_TOKENS = 8, 256
        sup = decode_sm90.supports
        decode_sm90.supports = lambda *a, **kw: False
        fn = lambda: attention(q, kc, vc, out=out)
        t_old = graph_time(fn)
        decode_sm90.supports = sup
        r = dict(kind="gbench_triton", B=B, N=N, graph_ms=t_old, sdpa_graph_ms=t_sdpa_g, x_sdpa_graph=t_sdpa_g / t_old); rows_out.append(r); print(json.dumps(r), flush=True)
        del kc, vc, q
        torch.cuda.empty_cache()
    json.dump(rows_out, open(os.path.join(OUT, "decode_gbench.json"), "w"), indent=1)
    print("| B | N | waves | splits | graph ms | main | pro | reduce | eager | sdpa graph | x sdpa | x main | %bw |")
    for r in rows_out:
        if r["kind"] == "gbench":
            print(f"| {r['B']} | {r['N']} | {r['waves']} | {r['splits']} | {r['graph_ms']:.4f} | {r['main_ms']:.4f} | {r['prologue_ms']:.4f} | {r['reduce_ms']:.4f} | {r['eager_ms']:.4f} | {r['sdpa_graph_ms']:.4f} | {r['x_sdpa_graph']:.2f} | {r['x_sdpa_main']:.2f} | {100*r['frac_bw_graph']:.0f}% |")
        if r["kind"] == "smag":
            print(f"| {r['B']} | {r['N']} | smag w{r['waves']} | | {r['graph_ms']:.4f} | part {r['partials_ms']:.4f} | diff {r['diff_vs_std']:.1e} | | | | {r['x_sdpa_graph']:.2f} | | |")
        if r["kind"] == "gbench_triton":
            print(f"| {r['B']} | {r['N']} | triton | | {r['graph_ms']:.4f} | | | | | {r['sdpa_graph_ms']:.4f} | {r['x_sdpa_graph']:.2f} | | |")


def ncu_target():
    B, N = 8, 32768
    q = torch.randn(B, 32, 1, 128, device=dev, dtype=torch.float16)
    kc = tq.compress(torch.randn(B, 8, N, 128, device=dev, dtype=torch.float16)); vc = tq.compress(torch.randn(B, 8, N, 128, device=dev, dtype=torch.float16))
    out = torch.empty_like(q)
    for _ in range(3):
        attention(q, kc, vc, out=out)
    torch.cuda.synchronize()


def small():
    """A few small launches for compute-sanitizer."""
    for dt in (torch.float16, torch.bfloat16):
        for (B, g, n) in [(1, 4, 1), (2, 8, 100), (1, 16, 257)]:
            q = torch.randn(B, 2 * g, 1, 128, device=dev, dtype=dt)
            kc = tq.compress(torch.randn(B, 2, n, 128, device=dev, dtype=dt)); vc = tq.compress(torch.randn(B, 2, n, 128, device=dev, dtype=dt))
            out = attention(q, kc, vc); torch.cuda.synchronize()
    print("small done")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "check"
    if what == "check":
        bad = check()
        json.dump(rows_out, open(os.path.join(OUT, "decode_check.json"), "w"), indent=1)
    elif what == "bench":
        bench()
    elif what == "gbench":
        gbench()
    elif what == "ncu":
        ncu_target()
    else:
        small()
