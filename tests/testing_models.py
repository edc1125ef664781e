"""Tiny random-weight causal LMs built from configs (no downloads), for tests and GPU checks.

Weights are drawn with a larger initializer range than the library default so that attention is
peaked rather than uniform: a backend that drops a mask or misaligns the causal diagonal then
changes the logits visibly.
"""

from __future__ import annotations

import torch
import transformers

# model family -> (config class, model class, extra config fields)
FAMILIES: dict[str, tuple[str, str, dict[str, object]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"use_sliding_window": False}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {}),
}


def tiny_causal_lm(
    family: str,
    *,
    head_dim: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    layers: int = 2,
    hidden: int = 64,
    vocab: int = 128,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    **overrides: object,
) -> transformers.PreTrainedModel:
    """A ``family`` causal LM with the given attention shape, random weights, in eval mode."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        initializer_range=overrides.pop("initializer_range", 0.15),
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
        **{**extra, **overrides},
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    model.generation_config.pad_token_id = 0
    return model.to(dtype).eval()
