"""Experiment: sign-magnitude K code words (13 PTX ops per 8 codes instead of 18)."""
import torch
from tqgen.gluon.lookup import LookupTables


def smag_key_asm(tab: LookupTables) -> str:
    return ("{\n.reg .b32 s, s1, w4, L, H;\n"
            "and.b32 s, $4, 0x77777777;\nshr.b32 s1, s, 16;\nshl.b32 w4, $4, 4;\n"
            f"prmt.b32 L, $5, {tab.lo1:#010x}, s;\nprmt.b32 H, $9, {tab.hi1:#010x}, s;\n"
            "lop3.b32 H, H, $4, 0x80808080, 0x78;\n"
            "prmt.b32 $0, L, H, 0x5140;\nprmt.b32 $1, L, H, 0x7362;\n"
            f"prmt.b32 L, $5, {tab.lo1:#010x}, s1;\nprmt.b32 H, $9, {tab.hi1:#010x}, s1;\n"
            "lop3.b32 H, H, w4, 0x80808080, 0x78;\n"
            "prmt.b32 $2, L, H, 0x5140;\nprmt.b32 $3, L, H, 0x7362;\n}")


def to_smag(packed: torch.Tensor) -> torch.Tensor:
    """Standard 4-bit packed bytes [..., W] (W % 4 == 0) -> sign-magnitude words, as bytes."""
    b = packed.to(torch.int64).reshape(*packed.shape[:-1], -1, 4)
    e, o = b >> 4, b & 15
    sg = lambda i: (i < 8).to(torch.int64)
    mg = lambda i: torch.where(i >= 8, i - 8, 7 - i)
    t = torch.arange(4, device=packed.device)
    w = ((mg(e) << (4 * t)) | (mg(o) << (16 + 4 * t)) | (sg(e) << (8 * t + 7)) | (sg(o) << (8 * t + 3))).sum(-1)
    out = torch.stack([(w >> (8 * k)) & 0xFF for k in range(4)], -1).to(torch.uint8)
    return out.reshape(packed.shape)
