"""Time hand variants of the 4-bit D=128 compress kernel on a GPU (same args as generated/)."""
import importlib.util, sys, json, os
import torch
from triton.testing import do_bench
from tqgen import TurboQuant
from tqgen.ops.compress import rotation_halves
from tqgen.quant import unpack
dev = torch.device("cuda"); T, H, D = 65536, 8, 128
tq = TurboQuant(D, 4)
sms = torch.cuda.get_device_properties(dev).multi_processor_count
src = torch.randn(H * T * D, device=dev, dtype=torch.float16); dst = torch.empty_like(src)
copy = 2 * src.numel() * 2 / do_bench(lambda: dst.copy_(src), rep=200) / 1e9
rot = rotation_halves(tq.rotation(dev)); bnd = tq.boundaries(dev).float().contiguous()
res = {}
for dt in (torch.float16, torch.bfloat16):
    x = torch.randn(1, H, T, D, device=dev, dtype=dt)
    ref = tq.compress(x)
    for name in sys.argv[1:]:
        spec = importlib.util.spec_from_file_location(name, f"scratch/cv/{name}.py"); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        for pps in (2, 3, 4):
            buf = tq.empty(1, H, T, dev)
            f = lambda: m.compress_kernel[(min(T // 64 * H, pps * sms),)](x, *x.stride()[:3], rot, bnd, buf.packed, *buf.packed.stride()[:3], buf.norms, *buf.norms.stride()[:3], T, H, 1, 0, BLOCK_T=64, num_warps=4, num_stages=1)
            f(); torch.cuda.synchronize()
            diff = (unpack(buf.packed, 4, D) != unpack(ref.packed, 4, D)).float().mean().item()
            xf = x.float()
            mse = lambda c: (tq.decompress(c, dtype=torch.float32) - xf).pow(2).mean().item()
            mse_ratio = mse(buf) / mse(ref)
            ms = do_bench(f, warmup=25, rep=200, return_mode="median")
            nbytes = x.numel() * 2 + buf.packed.numel() + buf.norms.numel() * 4
            res[f"{name} {dt} pps{pps}"] = dict(us=ms * 1e3, frac=nbytes / ms / 1e9 / copy, codes_vs_current=diff, mse_vs_current=mse_ratio)
            print(f"{name:8s} {str(dt)[6:]:9s} pps{pps} {ms*1e3:6.1f} us {nbytes/ms/1e9/copy*100:5.1f}% copy, codes differ from current {diff:.1e}, MSE x{mse_ratio:.5f}", flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "cv_bench.json"), "w"), indent=1)
