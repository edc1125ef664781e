"""Hugging Face transformers integration: a compressed KV cache and attention backends on the generated kernels.

Three lines to use it with a model::

    import tqgen.hf
    cache = tqgen.hf.enable(model, k_bits=4, v_bits=4)
    out = model.generate(**inputs, cache=cache, max_new_tokens=64)

(``past_key_values=cache`` on transformers that predate the ``cache=`` rename;
``**tqgen.hf.cache_kwargs(model, cache, "generate")`` picks the keyword the installed one takes.)

The hook names and signatures match ``turboquant_vllm.triton``'s, so its users can switch by
changing an import.
"""

from tqgen.hf.backends import (
    TRITON_FA,
    TRITON_FA_TQ4_KV,
    register_triton_fa,
    triton_fa_forward,
    triton_fa_tq4_kv_forward,
)
from tqgen.hf.cache import (
    CompressedDynamicCache,
    CompressedLayer,
    FullPrecisionLayer,
    LayerSizes,
    cache_kwarg,
    cache_kwargs,
)
from tqgen.hf.install import disable, enable, install_fused_tq4_kv, install_triton_fa, uninstall_fused_tq4_kv
from tqgen.hf.static_cache import (
    TRITON_FA_TQ_STATIC,
    CompressedStaticCache,
    CompressedStaticLayer,
    cache_argument,
    install_static_cache,
)

__all__ = [
    "TRITON_FA",
    "TRITON_FA_TQ4_KV",
    "TRITON_FA_TQ_STATIC",
    "CompressedDynamicCache",
    "CompressedStaticCache",
    "CompressedStaticLayer",
    "cache_argument",
    "CompressedLayer",
    "FullPrecisionLayer",
    "LayerSizes",
    "cache_kwarg",
    "cache_kwargs",
    "disable",
    "enable",
    "install_fused_tq4_kv",
    "install_static_cache",
    "install_triton_fa",
    "register_triton_fa",
    "triton_fa_forward",
    "triton_fa_tq4_kv_forward",
    "uninstall_fused_tq4_kv",
]
