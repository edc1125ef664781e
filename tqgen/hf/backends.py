"""transformers attention backends running tqgen's generated kernels.

Both functions follow transformers' attention-function protocol: they get q ``[B, Hq, Sq, D]``
and k/v ``[B, Hkv, Skv, D]`` (GQA heads not repeated: the kernels map query head h to KV head
h // (Hq / Hkv) themselves), the mask built by the mask function registered under the same name
(``sdpa_mask``: bool, True = attend, or None when plain causal attention is enough), and return
``(out [B, Sq, Hq, D] contiguous, None)``.

* ``triton_fa`` (:func:`triton_fa_forward`): FlashAttention over the K/V it is given.
* ``triton_fa_tq4_kv`` (:func:`triton_fa_tq4_kv_forward`): reads the K/V of the module's layer
  straight from the :class:`~tqgen.hf.cache.CompressedDynamicCache` stashed on the module by
  :func:`~tqgen.hf.install.install_fused_tq4_kv`; layers the cache keeps uncompressed, and
  prefills over exact K/V, go through ``triton_fa``.

Causal masking is bottom-right aligned (query i of Sq sees key j <= i + Skv - Sq), which is what
chunked prefill onto a non-empty cache and multi-token decode steps need.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tqgen.attention import attention, launch_attention
from tqgen.ops.exact_tokens import attention_with_exact

TRITON_FA = "triton_fa"
TRITON_FA_TQ4_KV = "triton_fa_tq4_kv"

# Features some models request that these kernels do not implement: fail loudly, never ignore.
_UNSUPPORTED_KWARGS = {
    "softcap": "attention logit soft-capping (e.g. Gemma 2)",
    "s_aux": "attention sinks",
    "sinks": "attention sinks",
    "position_bias": "additive position bias (e.g. T5)",
}


def _check_supported(dropout: float, kwargs: dict[str, object]) -> None:
    if dropout:
        raise ValueError(
            f"tqgen attention is inference-only: dropout must be 0, got {dropout} "
            "(call model.eval(), or set the config's attention_dropout to 0)"
        )
    for name, what in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"tqgen attention does not support {what} (got {name}=...); keep this model on "
                "attn_implementation='eager' (or 'sdpa' where the model supports it)"
            )


def _is_causal(module: torch.nn.Module, query: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict[str, object]) -> bool:
    """Causal masking by the kernel is needed only when no mask was materialised (as in SDPA)."""
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    return bool(is_causal) and attention_mask is None and query.shape[2] > 1


def _attend(query: torch.Tensor, key: object, value: object, attend=attention,
            **kwargs: object) -> tuple[torch.Tensor, None]:
    """``attend()`` (``attention()``) written straight into transformers' ``[B, Sq, Hq, D]`` layout (its
    ``out`` is that buffer seen as ``[B, Hq, Sq, D]``), so no copy follows.  When autograd records
    the call (``out=`` is refused then) the result is transposed and copied instead."""
    if query.requires_grad and torch.is_grad_enabled():
        return attend(query, key, value, **kwargs).transpose(1, 2).contiguous(), None
    batch, heads, seq, dim = query.shape
    out = torch.empty((batch, seq, heads, dim), dtype=query.dtype, device=query.device)
    attend(query, key, value, out=out.transpose(1, 2), **kwargs)
    return out, None


def triton_fa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """FlashAttention (generated kernels) as a transformers attention function.

    ``attention_mask``: bool (True = attend) or additive, broadcastable to [B, Hq, Sq, Skv].
    ``scaling`` defaults to 1/sqrt(D); ``is_causal`` (kwarg) overrides ``module.is_causal``.
    """
    _check_supported(dropout, kwargs)
    is_causal = _is_causal(module, query, attention_mask, kwargs)
    return _attend(query, key, value, sm_scale=scaling, is_causal=is_causal, attention_mask=attention_mask)


def triton_fa_tq4_kv_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Attention over the compressed K/V cache of ``module.layer_idx``, decoded inside the kernel.

    ``key``/``value`` are ignored when the cache stashed on ``module._tq4_cache`` has just stored
    them compressed (its ``update`` returned exactly ``key``); otherwise (no cache, an uncompressed
    layer, a prefill over exact K/V, or a different cache passed to the model) this is
    :func:`triton_fa_forward` over ``key``/``value``.
    """
    _check_supported(dropout, kwargs)
    cache = getattr(module, "_tq4_cache", None)
    fused = cache.fused_kv(getattr(module, "layer_idx", None), key) if cache is not None else None
    if fused is None:
        return triton_fa_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    compressed_key, compressed_value = fused
    is_causal = _is_causal(module, query, attention_mask, kwargs)
    exact = cache.exact_tokens(module.layer_idx)  # exact sinks / recent tokens beside the compressed ones
    if exact is not None:
        return _attend(query, compressed_key, compressed_value, attend=attention_with_exact, exact=exact,
                       checked=True, sm_scale=scaling, is_causal=is_causal, attention_mask=attention_mask)
    # The cache's own buffers (and the model's shapes, at install): launched without re-checking them.
    attend = attention if query.requires_grad and torch.is_grad_enabled() else launch_attention
    return _attend(query, compressed_key, compressed_value, attend=attend, sm_scale=scaling, is_causal=is_causal,
                   attention_mask=attention_mask)


def register_triton_fa() -> None:
    """Register ``triton_fa`` and ``triton_fa_tq4_kv`` with transformers (idempotent).

    Each name is registered with ``AttentionInterface`` and, with ``sdpa_mask``, with
    ``AttentionMaskInterface``: a name without a mask function gets ``attention_mask=None``, which
    silently drops padding.
    """
    for name, forward in ((TRITON_FA, triton_fa_forward), (TRITON_FA_TQ4_KV, triton_fa_tq4_kv_forward)):
        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, sdpa_mask)
