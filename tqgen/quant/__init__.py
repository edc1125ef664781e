"""TurboQuant building blocks: rotation, Lloyd-Max codebooks, bit packing and a PyTorch reference."""

from tqgen.spec import SUPPORTED_BITS

from .codebook import Codebook, lloyd_max_codebook
from .packing import pack, packed_width, plane_width, planes, unpack
from .reference import compress, decompress, reference_attention
from .rotation import rotation_matrix

__all__ = [
    "Codebook",
    "SUPPORTED_BITS",
    "compress",
    "decompress",
    "lloyd_max_codebook",
    "pack",
    "packed_width",
    "plane_width",
    "planes",
    "reference_attention",
    "rotation_matrix",
    "unpack",
]
