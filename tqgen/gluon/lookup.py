"""Codebook lookups as PTX byte permutes: 4-bit codes to fp16/bf16 without memory or conversions.

A TurboQuant codebook is symmetric: ``c[15 - i] = -c[i]``, and stays so bit for bit in fp16 and
bf16 (rounding to nearest is symmetric, negation flips the sign bit).  So a code ``i`` is a sign
and one of 8 magnitudes ``|c[8 + m]|``::

    i >= 8:  +|c[8 + m]|, m = i & 7
    i <  8:  -|c[8 + m]|, m = 7 - i = (i & 7) ^ 7

``prmt`` selects 4 bytes out of 8 by four 3-bit selectors, so one ``prmt`` reads the low bytes of
4 magnitudes from an 8-byte table (two 32-bit words) and a second one their high bytes; the sign
bit is or-ed into the high bytes; two more ``prmt`` interleave low and high bytes into fp16 pairs.
Per 32-bit word of codes (8 codes): 6 instructions to turn codes into selectors and sign masks,
then 6 per half word: 18, no memory access and no int-to-float conversion.

The first word of each table (``lo0``/``hi0``, magnitudes 0-3) is an operand held in a register
for the whole kernel; the second (magnitudes 4-7) is an immediate (SASS ``PRMT`` takes one
immediate source).  Held as immediates in both slots, ptxas rematerialises them before every
``prmt`` (one extra instruction each).

Two packings of the input word, matching the two MMA operands of the decode kernel:

* :func:`key_lookup_asm` (``pack=4``): 4 code bytes of one vector, ``b_t = e_t << 4 | o_t``
  (high nibble = even coordinate).  Outputs ``(even, odd)``: two fp16 tensors, each element the
  value of the even / odd coordinate of the matching input byte.
* :func:`value_lookup_asm` (``pack=2``): two 16-bit halves, bytes ``(c, c + 1)`` of token ``t`` and
  of token ``t + 1``.  Outputs four fp16 tensors (even of byte c, even of byte c + 1, odd of byte c,
  odd of byte c + 1), each 32-bit register holding the pair (token t, token t + 1): the order the
  tensor cores want when tokens are the reduction dimension.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

SIGN_MASK = 0x8000


@dataclass(frozen=True)
class LookupTables:
    """The 8 magnitudes ``|c[8 + m]|`` of a symmetric 16-entry codebook as prmt byte tables."""

    lo0: int  # low bytes of magnitudes 0-3 (register operand)
    lo1: int  # low bytes of magnitudes 4-7 (immediate)
    hi0: int  # high bytes of magnitudes 0-3 (register operand)
    hi1: int  # high bytes of magnitudes 4-7 (immediate)

    def registers(self) -> tuple[int, int]:
        """(lo0, hi0) as signed int32, the form a kernel argument tensor holds."""
        return tuple(w - (1 << 32) if w >= 1 << 31 else w for w in (self.lo0, self.hi0))  # type: ignore[return-value]


def half_bits(values: torch.Tensor, dtype: torch.dtype) -> list[int]:
    """The 16-bit patterns of ``values`` rounded to ``dtype`` (fp16 or bf16)."""
    raw = values.detach().to("cpu", torch.float32).to(dtype).view(torch.int16).tolist()
    return [v & 0xFFFF for v in raw]


def is_symmetric(bits: list[int]) -> bool:
    """``c[15 - i] == -c[i]`` bit for bit, and the upper half positive."""
    n = len(bits)
    return n == 16 and all(bits[n - 1 - i] == bits[i] ^ SIGN_MASK for i in range(n)) and not any(
        b & SIGN_MASK for b in bits[n // 2:]
    )


def tables(bits: list[int]) -> LookupTables:
    """prmt tables of the magnitudes of a symmetric codebook (``is_symmetric(bits)`` must hold)."""
    if not is_symmetric(bits):
        raise ValueError("the codebook is not symmetric (c[15 - i] == -c[i] in the kernel's dtype)")
    mags = bits[8:]

    def word(bs: list[int]) -> int:
        return bs[0] | bs[1] << 8 | bs[2] << 16 | bs[3] << 24

    lo = [m & 0xFF for m in mags]
    hi = [m >> 8 for m in mags]
    return LookupTables(word(lo[:4]), word(lo[4:]), word(hi[:4]), word(hi[4:]))


def _half_word(sel: str, signs: str, tab: LookupTables, even: str, odd: str) -> str:
    """Codes of the 4 nibbles selected by ``sel`` -> fp16 pairs (nibbles 1, 3) and (0, 2)."""
    return (
        f"prmt.b32 L, $LO0, {tab.lo1:#010x}, {sel};\n"   # low bytes of the 4 magnitudes
        f"prmt.b32 H, $HI0, {tab.hi1:#010x}, {sel};\n"   # their high bytes
        f"prmt.b32 K, 0, 0xffffffff, {signs};\n"          # 0xff in each byte whose code is negative
        "lop3.b32 H, H, K, 0x80808080, 0xf8;\n"           # H | (K & 0x80808080): the sign bits
        f"prmt.b32 {even}, L, H, 0x7351;\n"               # (value of nibble 1, of nibble 3)
        f"prmt.b32 {odd}, L, H, 0x6240;\n"                # (value of nibble 0, of nibble 2)
    )


def _selectors(word: str) -> str:
    """``i0`` = magnitude index per nibble, ``f`` = 7 in each nibble whose code is negative."""
    return (
        f"lop3.b32 t, {word}, 0x88888888, 0, 0x0c;\n"   # ~word & 0x88888888: 8 where bit 3 is 0
        "shr.b32 u, t, 3;\n"
        "sub.u32 f, t, u;\n"                               # 8 - 1 = 7 per negative nibble
        f"lop3.b32 i0, {word}, f, 0x77777777, 0x28;\n"   # (word ^ f) & 7 per nibble
        "shr.b32 i1, i0, 16;\n"
        "shr.b32 f1, f, 16;\n"
    )


_REGS = ".reg .b32 t, u, f, f1, i0, i1, L, H, K, w;\n"


def key_lookup_asm(tab: LookupTables) -> str:
    """PTX for ``inline_asm_elementwise(pack=4)``: $0,$1 even-coordinate values, $2,$3 odd,
    $4 the code word, $5..$8 the lo0 table word, $9..$12 the hi0 word."""
    body = _selectors("$4") + _half_word("i0", "f", tab, "$0", "$2") + _half_word("i1", "f1", tab, "$1", "$3")
    return "{\n" + _REGS + body.replace("$LO0", "$5").replace("$HI0", "$9") + "}"


def value_lookup_asm(tab: LookupTables) -> str:
    """PTX for ``inline_asm_elementwise(pack=2)`` on uint16 code pairs: $4 = (token t bytes c, c+1 |
    token t+1 bytes c, c+1); $0 even of byte c, $1 even of byte c+1, $2 odd of byte c, $3 odd of
    byte c+1, each (token t, token t+1); $5,$6 the lo0 table word, $7,$8 the hi0 word."""
    reorder = "prmt.b32 w, $4, 0, 0x3120;\n"  # bytes (t c, t+1 c, t c+1, t+1 c+1)
    body = reorder + _selectors("w") + _half_word("i0", "f", tab, "$0", "$2") + _half_word("i1", "f1", tab, "$1", "$3")
    return "{\n" + _REGS + body.replace("$LO0", "$5").replace("$HI0", "$7") + "}"


# ------------------------------------------------------------------ CPU emulation (tests)
def _prmt(a: int, b: int, c: int) -> int:
    src = struct.pack("<II", a & 0xFFFFFFFF, b & 0xFFFFFFFF)
    out = 0
    for k in range(4):
        s = (c >> (4 * k)) & 0xF
        byte = src[s & 7]
        if s & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        out |= byte << (8 * k)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = ((a >> bit) & 1) << 2 | ((b >> bit) & 1) << 1 | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def emulate(asm: str, inputs: dict[str, int]) -> dict[str, int]:
    """Run the straight-line PTX of this module on Python ints (``$n`` operands from ``inputs``).

    Only the instructions used here are understood; it exists so the CPU tests can check the
    lookups bit for bit against the codebook.
    """
    regs: dict[str, int] = dict(inputs)

    def val(tok: str) -> int:
        tok = tok.strip()
        return regs[tok] if tok in regs else int(tok, 0)

    for line in asm.splitlines():
        line = line.split("//")[0].strip().rstrip(";")
        if not line or line[0] in "{}." or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        d, *args = [x.strip() for x in rest.split(",")]
        v = [val(x) for x in args]
        if op == "prmt.b32":
            r = _prmt(*v)
        elif op == "lop3.b32":
            r = _lop3(*v)
        elif op == "shr.b32":
            r = v[0] >> v[1]
        elif op == "shl.b32":
            r = v[0] << v[1]
        elif op == "and.b32":
            r = v[0] & v[1]
        elif op == "sub.u32":
            r = (v[0] - v[1]) & 0xFFFFFFFF
        else:
            raise ValueError(f"emulate: unsupported instruction {op}")
        regs[d] = r & 0xFFFFFFFF
    return regs
