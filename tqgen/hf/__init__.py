"""Hugging Face transformers integration: a compressed KV cache and attention backends on the generated kernels.

Three lines to use it with a model::

    import tqgen.hf
    cache = tqgen.hf.enable(model, k_bits=4, v_bits=4)
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=64)

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
from tqgen.hf.cache import CompressedDynamicCache, CompressedLayer, FullPrecisionLayer
from tqgen.hf.install import enable, install_fused_tq4_kv, install_triton_fa, uninstall_fused_tq4_kv

__all__ = [
    "TRITON_FA",
    "TRITON_FA_TQ4_KV",
    "CompressedDynamicCache",
    "CompressedLayer",
    "FullPrecisionLayer",
    "enable",
    "install_fused_tq4_kv",
    "install_triton_fa",
    "register_triton_fa",
    "triton_fa_forward",
    "triton_fa_tq4_kv_forward",
    "uninstall_fused_tq4_kv",
]
