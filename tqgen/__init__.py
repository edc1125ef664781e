"""tqgen: generated, autotuned Triton attention kernels for TurboQuant-compressed KV caches.

Public API (names and signatures of ``turboquant_vllm.triton`` where they overlap):

* attention: ``attention`` (any widths, K/V plain or compressed), ``triton_flash_attention``,
  ``triton_flash_attention_tq4``, ``triton_flash_attention_tq4_kv``, ``fused_qk_scores``
* compression: ``TurboQuant`` (one object per (head_dim, bits, seed) mode), ``CompressedTensor``,
  ``tq4_compress``, ``tq4_decompress``
* Hugging Face: ``tqgen.hf`` (imported on demand: it needs transformers)
"""

from tqgen.attention import attention, triton_flash_attention, triton_flash_attention_tq4, triton_flash_attention_tq4_kv
from tqgen.compressed import CompressedTensor
from tqgen.scores import fused_qk_scores
from tqgen.turboquant import TurboQuant, tq4_compress, tq4_decompress
from tqgen.version import __version__

__all__ = [
    "CompressedTensor",
    "TurboQuant",
    "__version__",
    "attention",
    "fused_qk_scores",
    "tq4_compress",
    "tq4_decompress",
    "triton_flash_attention",
    "triton_flash_attention_tq4",
    "triton_flash_attention_tq4_kv",
]
