"""GPU: the original-space decompress kernel (tf32x3) vs the fp16 hi+lo variant (scratch/dv/f16.py), 4-bit D=128."""
import importlib.util, json, os, sys
import torch
from triton.testing import do_bench
from tqgen import TurboQuant
from tqgen.ops.compress import rotation_halves
dev = "cuda"; tq = TurboQuant(128, 4)
res = {}
for T, H in ((32768, 8), (8192, 8)):
    x = torch.randn(1, H, T, 128, device=dev, dtype=torch.float16)
    c = tq.compress(x)
    ref = tq.decompress(c, dtype=torch.float32)
    exact = tq.decompress(c, rotated=True, dtype=torch.float32).double() @ tq.rotation(dev).double()
    cur_ms = do_bench(lambda: tq.decompress(c, dtype=torch.float16), warmup=10, rep=100, return_mode="median")
    rot_ms = do_bench(lambda: tq.decompress(c, rotated=True, dtype=torch.float16), warmup=10, rep=100, return_mode="median")
    spec = importlib.util.spec_from_file_location("f16", "scratch/dv/f16.py"); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    halves = rotation_halves(tq.rotation(dev)); cent = tq.centroids(dev).float().contiguous()
    for bt, w in ((64, 4), (128, 8), (32, 4)):
        for dt in (torch.float16, torch.float32):
            out = torch.empty(1, H, T, 128, device=dev, dtype=dt)
            f = lambda: m.decompress_kernel[(T // bt, H)](c.packed, *c.packed.stride()[:3], c.norms, *c.norms.stride()[:3], cent, halves, out, *out.stride()[:3], T, H, BLOCK_T=bt, num_warps=w)
            f(); torch.cuda.synchronize()
            err = ((out.double() - exact).norm() / exact.norm()).item()
            cur_err = ((ref.double() - exact).norm() / exact.norm()).item()
            ms = do_bench(f, warmup=10, rep=100, return_mode="median")
            res[f"T{T} bt{bt} w{w} {dt}"] = dict(f16_us=ms * 1e3, cur_fp16_us=cur_ms * 1e3, rotated_space_us=rot_ms * 1e3, rel_err=err, cur_fp32_rel_err=cur_err)
            print(f"T={T}x{H} bt{bt} w{w} {str(dt)[6:]}: f16 variant {ms*1e3:.1f} us (current tf32x3 fp16-out {cur_ms*1e3:.1f} us, rotated-space {rot_ms*1e3:.1f} us), rel err {err:.1e} (current fp32 {cur_err:.1e})", flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "dv_bench.json"), "w"), indent=1)
