"""Switch a transformers model onto tqgen's attention backends, and back.

The attention function is looked up from ``config._attn_implementation`` on every forward, so
installing is: register the backends, point the model's config(s) at one, and (for the fused
backend) stash the cache on every attention module as ``module._tq4_cache``.  What the kernels
cannot do (soft-capped logits, GQA groups over 16) is refused here, once, so the backends need not
check the model per layer and step.  The implementation in place before the first install is
remembered on the model and restored exactly by :func:`uninstall_fused_tq4_kv` (the seed's name:
it undoes a fused install) or :func:`disable` (undoes every install, ``install_triton_fa`` too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tqgen.hf.backends import TRITON_FA, TRITON_FA_TQ4_KV, register_triton_fa
from tqgen.hf.cache import CompressedDynamicCache, SkipPolicy
from tqgen.validation import check_gqa_group

# Attribute on the model: [(config, attn implementation before tqgen's first install), ...].
_SAVED = "_tqgen_saved_attn_implementation"


def _configs(model: torch.nn.Module) -> list[object]:
    """Every distinct config the model's attention may be dispatched from (model, submodels, sub-configs)."""
    if not hasattr(model, "config"):
        raise AttributeError(f"{type(model).__name__} has no `config`: expected a transformers PreTrainedModel")
    found: dict[int, object] = {}
    pending = [model.config] + [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    while pending:
        config = pending.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None and hasattr(sub, "_attn_implementation"):
                pending.append(sub)
    return list(found.values())


def _set_attn_implementation(model: torch.nn.Module, name: str) -> None:
    """Point the model at ``name``, remembering (once) what it used before."""
    if not hasattr(model, _SAVED):
        setattr(model, _SAVED, [(config, config._attn_implementation) for config in _configs(model)])
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def _check_model_supported(model: torch.nn.Module) -> None:
    """Refuse up front what the kernels cannot do, rather than failing inside the first forward."""
    for config in _configs(model):
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise NotImplementedError(
                f"{type(model).__name__} soft-caps its attention logits (attn_logit_softcapping="
                f"{config.attn_logit_softcapping}), which tqgen's kernels do not implement"
            )
        q_heads = getattr(config, "num_attention_heads", None)
        kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
        if isinstance(q_heads, int) and isinstance(kv_heads, int):
            check_gqa_group(q_heads, kv_heads, "num_attention_heads", "num_key_value_heads")


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    modules = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    if not modules:
        raise AttributeError(f"{type(model).__name__} has no attention modules with a `layer_idx`")
    return modules


def install_triton_fa(model: torch.nn.Module) -> None:
    """Register the backends and run ``model``'s attention with tqgen's FlashAttention (``triton_fa``)."""
    _check_model_supported(model)
    register_triton_fa()
    _set_attn_implementation(model, TRITON_FA)


def install_fused_tq4_kv(model: torch.nn.Module, cache: CompressedDynamicCache) -> None:
    """Run ``model``'s attention straight from ``cache``'s compressed K/V (``triton_fa_tq4_kv``).

    Stashes ``cache`` on every attention module as ``module._tq4_cache`` and puts it in
    ``fused_mode`` (its ``update`` then keeps no full-precision K/V); a cache installed before on
    this model leaves fused mode.  Pass the same ``cache`` to ``generate``/``forward`` as
    ``cache=`` (``past_key_values=`` before transformers' rename; :func:`~tqgen.hf.cache.cache_kwargs`).
    """
    if not isinstance(cache, CompressedDynamicCache):
        raise TypeError(f"cache must be a CompressedDynamicCache, got {type(cache).__name__}")
    attach_cache(model, cache, register_triton_fa, TRITON_FA_TQ4_KV)


def attach_cache(model: torch.nn.Module, cache: object, register: Callable[[], None], backend: str) -> None:
    """Stash ``cache`` on every attention module (a cache attached before leaves fused mode), put
    it in fused mode and switch ``model`` to the ``backend`` that ``register`` registers."""
    _check_model_supported(model)
    modules = _attention_modules(model)
    register()
    for module in modules:
        previous = getattr(module, "_tq4_cache", None)
        if previous is not None and previous is not cache:
            previous.fused_mode = False
        module._tq4_cache = cache
    cache.fused_mode = True
    _set_attn_implementation(model, backend)


def uninstall_fused_tq4_kv(model: torch.nn.Module) -> None:
    """Undo :func:`install_fused_tq4_kv` (or :func:`enable`, ``install_static_cache``), as the seed's
    function of this name does: drop the stashed cache (leaving fused mode) and restore the
    attention implementation the model had before tqgen, exactly (the seed restores SDPA).

    A model with no cache attached (only :func:`install_triton_fa`) is left as it is:
    :func:`disable` undoes both."""
    if _drop_caches(model):
        _restore_implementation(model)


def disable(model: torch.nn.Module) -> None:
    """Undo every tqgen install on ``model`` (:func:`enable`, :func:`install_fused_tq4_kv`,
    ``install_static_cache`` and :func:`install_triton_fa`): drop the stashed caches and restore the
    attention implementation the model had before tqgen's first install, exactly."""
    _drop_caches(model)
    _restore_implementation(model)


def _drop_caches(model: torch.nn.Module) -> bool:
    """Remove ``_tq4_cache`` from every module (its cache leaves fused mode); whether there was one."""
    found = False
    for module in model.modules():
        cache = module.__dict__.pop("_tq4_cache", None)
        if cache is not None:
            cache.fused_mode = False
            found = True
    return found


def _restore_implementation(model: torch.nn.Module) -> None:
    """Point the model's configs back at what they used before tqgen's first install."""
    saved = model.__dict__.pop(_SAVED, None)
    if saved is None:
        return
    for config, implementation in saved:
        # The internal attribute: the public setter would also overwrite the sub-configs.
        if hasattr(config, "_attn_implementation_internal"):
            config._attn_implementation_internal = implementation
        else:
            config._attn_implementation = implementation


def enable(
    model: torch.nn.Module,
    k_bits: int = 4,
    v_bits: int = 4,
    *,
    skip_layers: SkipPolicy = None,
    static: bool = False,
    max_cache_len: int | None = None,
    **cache_options: object,
):
    """Build a compressed cache for ``model`` and install the fused backend on it.

    Default: a :class:`CompressedDynamicCache`; ``skip_layers`` and ``cache_options`` (``seed``,
    ``growth``, ``initial_capacity``, ``exact_prefill``) go to it.  With ``static=True``, a
    :class:`~tqgen.hf.static_cache.CompressedStaticCache` of ``max_cache_len`` tokens (required;
    ``cache_options``: ``seed``) read by the traceable static backend, for ``torch.compile`` and
    CUDA graphs.  Returns the cache; pass it to ``generate`` under
    :func:`~tqgen.hf.static_cache.cache_argument` (``past_key_values`` before transformers 5.24)::

        cache = tqgen.hf.enable(model, k_bits=4, v_bits=4)
        out = model.generate(**inputs, cache=cache, max_new_tokens=64)
    """
    if static:
        from tqgen.hf.static_cache import CompressedStaticCache, install_static_cache

        if max_cache_len is None:
            raise ValueError("static=True needs max_cache_len (prompt + new tokens, at most)")
        cache = CompressedStaticCache(model.config, max_cache_len, k_bits=k_bits, v_bits=v_bits,
                                      skip_layers=skip_layers, **cache_options)
        install_static_cache(model, cache)
        return cache
    if max_cache_len is not None:
        raise ValueError("max_cache_len is for static=True; the dynamic cache grows (see initial_capacity)")
    cache = CompressedDynamicCache(model.config, k_bits=k_bits, v_bits=v_bits, skip_layers=skip_layers, **cache_options)
    install_fused_tq4_kv(model, cache)
    return cache
