"""The generated kernels' parameters against what the launchers pass, for every variant of the matrix.

The launchers (``tqgen/ops``) mirror each template's signature by hand (which operands, whether
``Pi`` is passed, the strides of each tensor).  Here every launch is intercepted before it runs
(nothing executes, so this is fast and needs no GPU): each call's positional arguments must be
exactly the kernel's runtime parameters and its keywords exactly the constexprs, each tensor's
stride parameters must be that tensor's strides, and the named operands must be the caller's
tensors.  The variants are reached through the public entry points (``attention``,
``TurboQuant.compress`` / ``decompress``, ``fused_qk_scores``), so the test also checks that
each one dispatches to the variant it should.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

import tqgen
from tqgen.compressed import CompressedTensor
from tqgen.quant.packing import packed_width
from tqgen.spec import Family, VariantSpec, default_matrix

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - every supported Triton has the interpreter
    InterpretedFunction = None

LAUNCH_OPTIONS = {"num_warps", "num_stages"}
B, H_KV, N_KV = 2, 2, 40
PREFILL_N_Q = 17  # > 16: the prefill schedule


@dataclass
class Launch:
    spec_id: str
    params: list[inspect.Parameter]
    args: tuple
    kwargs: dict[str, Any]
    bound: dict[str, Any] = field(default_factory=dict)


def _spec_id(fn: Any) -> str:
    """The variant id of a generated kernel (its module is named ``tqgen_generated.<id>_<hash>``)."""
    module = fn.fn.__module__ if hasattr(fn, "fn") else fn.__module__
    return re.sub(r"^tqgen_generated\.", "", module).rsplit("_", 1)[0]


def _is_constexpr(p: inspect.Parameter) -> bool:
    ann = p.annotation
    return ann is tl.constexpr or "constexpr" in str(ann)


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch made while the fixture is active, recorded instead of run."""
    calls: list[Launch] = []

    def record(self, *args, grid=None, warmup=False, **kwargs):
        fn = self.fn if hasattr(self, "fn") else self
        params = list(inspect.signature(fn).parameters.values())
        calls.append(Launch(_spec_id(self), params, args, {k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}))
        return None

    monkeypatch.setattr(JITFunction, "run", record)
    if InterpretedFunction is not None:
        monkeypatch.setattr(InterpretedFunction, "run", record)
    return calls


def check_launch(call: Launch) -> dict[str, Any]:
    """Positional arguments are the runtime parameters in order, keywords the constexprs; every
    run of ``stride_*`` parameters holds the strides of the tensor before it.  Returns the binding."""
    runtime = [p.name for p in call.params if not _is_constexpr(p)]
    constexprs = {p.name for p in call.params if _is_constexpr(p)}
    assert len(call.args) == len(runtime), (
        f"{call.spec_id}: the launcher passes {len(call.args)} positional arguments, the kernel "
        f"declares {len(runtime)} runtime parameters: {runtime}"
    )
    assert set(call.kwargs) == constexprs, f"{call.spec_id}: keywords {sorted(call.kwargs)} != constexprs {sorted(constexprs)}"
    bound = dict(zip(runtime, call.args))
    tensor, strides = None, []
    for name in [*runtime, None]:
        if name is not None and name.startswith("stride_"):
            assert type(bound[name]) is int, f"{call.spec_id}: {name} = {bound[name]!r} is not an int"
            strides.append(bound[name])
            continue
        if strides and not (tensor == "Mask" and not call.kwargs.get("HAS_MASK")):  # no mask: a placeholder
            assert tensor is not None, f"{call.spec_id}: strides {strides} follow no tensor"
            t = bound[tensor]
            assert isinstance(t, torch.Tensor), f"{call.spec_id}: {tensor} (before its strides) is not a tensor"
            expected = list(t.stride()[: len(strides)]) if t.dim() >= len(strides) else None
            assert strides == expected, f"{call.spec_id}: strides of {tensor} {strides} != {t.stride()}"
        tensor, strides = name, []
    return {**bound, **call.kwargs}


def same(a: Any, b: torch.Tensor) -> bool:
    """``a`` is ``b`` or a view of the same memory with the same elements (a squeezed norm, say)."""
    return isinstance(a, torch.Tensor) and a.data_ptr() == b.data_ptr() and a.numel() == b.numel()


# ----------------------------------------------------------------------- inputs
def compressed(head_dim: int, bits: int, heads: int = H_KV, n: int = N_KV) -> CompressedTensor:
    tq = tqgen.TurboQuant(head_dim, bits)
    g = torch.Generator().manual_seed(head_dim * 10 + bits)
    packed = torch.randint(0, 256, (B, heads, n, packed_width(head_dim, bits)), generator=g, dtype=torch.uint8)
    norms = torch.rand(B, heads, n, generator=g) + 0.5
    return CompressedTensor(packed, norms, bits, head_dim, tq.centroids(), tq.rotation())


def plain(head_dim: int, heads: int, n: int) -> torch.Tensor:
    return torch.randn(B, heads, n, head_dim, dtype=torch.float16)


ATTENTION = [s for s in default_matrix() if s.family.is_attention]


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_attention_launches_match_the_kernels(launches, masked):
    seen = set()
    for spec in ATTENTION:
        decode = spec.family is Family.ATTN_DECODE
        d, n_q, q_heads = spec.head_dim, 1 if decode else PREFILL_N_Q, H_KV * spec.group
        q = plain(d, q_heads, n_q)
        k = compressed(d, spec.k_bits) if spec.k_bits else plain(d, H_KV, N_KV)
        v = compressed(d, spec.v_bits) if spec.v_bits else plain(d, H_KV, N_KV)
        if spec.k_bits and spec.v_bits:
            v.rotation = k.rotation  # compressed K and V share Pi
        mask = torch.ones(1, 1, n_q, N_KV, dtype=torch.bool) if masked else None
        out = torch.empty(B, q_heads, n_q, d, dtype=torch.float16)
        launches.clear()
        tqgen.attention(q, k, v, is_causal=spec.causal, attention_mask=mask, out=out)

        ids = [c.spec_id for c in launches]
        reduce = VariantSpec(Family.DECODE_REDUCE, d, rotate=spec.rotate and spec.v_bits is not None)
        assert ids == ([spec.id, reduce.id] if decode else [spec.id]), f"{spec.id} launched {ids}"
        main = check_launch(launches[0])
        seen.add(spec.id)

        assert main["Q"] is q
        for name, x in (("K", k), ("V", v)):
            if isinstance(x, CompressedTensor):
                assert same(main[f"{name}_codes"], x.packed) and same(main[f"{name}_norms"], x.norms)
                assert torch.equal(main[f"{name}_centroids"], x.centroids.to(q.dtype))  # in Q's dtype
            else:
                assert main[name] is x
        if "Pi" in main:
            assert torch.equal(main["Pi"], k.rotation if spec.k_bits else v.rotation)
        if masked:
            assert main["HAS_MASK"] and main["MASK_IS_BOOL"] and main["Mask"].data_ptr() == mask.data_ptr()  # read in place, broadcast
        else:
            assert not main["HAS_MASK"]
        assert main["qk_scale"] == pytest.approx(math.log2(math.e) / math.sqrt(d))
        assert (main["N_Q"], main["N_KV"], main["H_KV"]) == (n_q, N_KV, H_KV)
        if decode:
            assert same(main["Part_acc"], launches[1].args[0])  # the reduce reads what decode wrote
            merge = check_launch(launches[1])
            assert merge["Out"] is out and (merge["N_ROWS"], merge["H_Q"], merge["N_Q"]) == (B * q_heads, q_heads, 1)
            if reduce.rotate:
                assert torch.equal(merge["Pi"], v.rotation)
            seen.add(reduce.id)
        else:
            assert main["Out"] is out
    matrix = {s.id for s in default_matrix() if s.family.is_attention or s.family is Family.DECODE_REDUCE}
    assert seen == matrix


CODECS = [s for s in default_matrix() if s.family in (Family.COMPRESS, Family.DECOMPRESS, Family.SCORES)]


@pytest.mark.parametrize("spec", CODECS, ids=lambda s: s.id)
def test_codec_launches_match_the_kernels(launches, spec):
    d, bits = spec.head_dim, spec.k_bits
    tq = tqgen.TurboQuant(d, bits)
    if spec.family is Family.COMPRESS:
        x = plain(d, H_KV, N_KV)
        tq.compress(x)
        (call,) = launches
        bound = check_launch(call)
        assert bound[call.params[0].name] is x  # the rest is compress.py.j2's own business
    elif spec.family is Family.DECOMPRESS:
        ct = compressed(d, bits)
        out = torch.empty(B, H_KV, N_KV, d, dtype=torch.float16)
        tq.decompress(ct, rotated=not spec.rotate, out=out)
        (call,) = launches
        bound = check_launch(call)
        assert same(bound["Codes"], ct.packed) and same(bound["Norms"], ct.norms) and bound["Out"] is out
        assert torch.equal(bound["Centroids"], ct.centroids)
        from tqgen.ops.compress import rotation_halves

        assert ("Pi" in bound) == spec.rotate  # un-rotating variants take Pi as fp16 hi + lo
        assert not spec.rotate or torch.equal(bound["Pi"], rotation_halves(ct.rotation))
        assert (bound["N_TOKENS"], bound["H"]) == (N_KV, H_KV)
    else:
        ct = compressed(d, bits)
        q = plain(d, H_KV * spec.group, 3)
        out = torch.empty(B, H_KV * spec.group, 3, N_KV, dtype=torch.float32)
        tqgen.fused_qk_scores(q, ct.packed, ct.norms, ct.centroids, 0.5,
                              n_q_heads=H_KV * spec.group, n_kv_heads=H_KV, out=out)  # fmt: skip
        (call,) = launches
        bound = check_launch(call)
        assert bound["Q"] is q and same(bound["K_codes"], ct.packed) and same(bound["K_norms"], ct.norms)
        assert bound["Out"] is out and bound["scale"] == 0.5
        assert (bound["N_Q"], bound["N_KV"], bound["H_KV"]) == (3, N_KV, H_KV)
    assert call.spec_id == spec.id
