"""SASS/register stats of compress kernels for sm_90 (no GPU): PYTHONPATH=/work/tri36 python scratch/compile_compress.py [file.py:kernel] ..."""
import importlib.util, os, re, subprocess, sys, collections
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
BIN = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")

def load(path, name=None):
    spec = importlib.util.spec_from_file_location("m" + str(abs(hash(path))), path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    if name is None:
        name = [n for n, v in vars(m).items() if isinstance(v, triton.runtime.jit.JITFunction)][0]
    return getattr(m, name)

def compile_fn(fn, sig, cx, num_warps, num_stages=1, tag="k"):
    for k in cx: sig[k] = "constexpr"
    names = list(sig)
    div = [i for i, n in enumerate(names) if sig[n].startswith("*") or n.startswith("stride")]
    src = ASTSource(fn=fn, signature=sig, constexprs=cx, attrs={(i,): [["tt.divisibility", 16]] for i in div})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    open(f"/tmp/{tag}.cubin", "wb").write(k.asm["cubin"])
    ru = subprocess.run([BIN + "/cuobjdump", "--dump-resource-usage", f"/tmp/{tag}.cubin"], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+)", ru, re.S)
    sass = subprocess.run([BIN + "/cuobjdump", "-sass", f"/tmp/{tag}.cubin"], capture_output=True, text=True).stdout
    open(f"/tmp/{tag}.sass", "w").write(sass); open(f"/tmp/{tag}.ttgir", "w").write(k.asm["ttgir"])
    ops = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M))
    total = sum(ops.values())
    print(f"{tag}: regs={m.group(1)} stack={m.group(2)} smem={k.metadata.shared} sass={total} " + " ".join(f"{o}:{c}" for o, c in ops.most_common(18)), flush=True)
    return k

if __name__ == "__main__":
    gen = "generated/compress_d128_b4_rot.py"
    fn = load(gen)
    sig = {"x_ptr": "*fp16", "stride_xb": "i64", "stride_xh": "i64", "stride_xn": "i64", "rotation_ptr": "*fp16", "boundaries_ptr": "*fp32",
           "packed_ptr": "*u8", "stride_pb": "i64", "stride_ph": "i64", "stride_pn": "i64", "norms_ptr": "*fp32", "stride_nb": "i64", "stride_nh": "i64", "stride_nn": "i64",
           "n_tokens": "i32", "n_heads": "i32", "n_batch": "i32", "start": "i32"}
    for dt in sys.argv[1:] or ["fp16"]:
        for bt, w in [(128, 8), (128, 4), (64, 4), (256, 8)]:
            compile_fn(fn, dict(sig, x_ptr="*" + dt), {"BLOCK_T": bt}, w, tag=f"{dt}_t{bt}_w{w}")
