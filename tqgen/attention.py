"""Attention dispatchers: tqgen's public attention API.

``attention`` is the general entry: K and V each plain (fp16/bf16/fp32) or a
:class:`~tqgen.compressed.CompressedTensor` of any width (K4/V3 is fine).  It checks
the inputs, picks the schedule (split-K decode for N_q <= 16, else prefill), the
generated variant (rendered on demand outside the committed matrix) and the launch
config (tune cache or arch default), and hands them to the launchers in
:mod:`tqgen.ops.attention`, which check nothing.  It never benchmarks.  The prefill schedule
over compressed K/V takes the method :func:`tqgen.tuning.prefill_route.prefill_method` names:
on a GPU, decompress then the vanilla kernel (:mod:`tqgen.ops.prefill_dequant`), else the
fused compressed kernel.
``launch_attention`` is the same dispatch without the checks, for tqgen's own callers
whose inputs pass them by construction (the Hugging Face backend reading its cache).

``triton_flash_attention``, ``triton_flash_attention_tq4`` and
``triton_flash_attention_tq4_kv`` keep the names and signatures of
``turboquant_vllm.triton`` so its users can switch by changing an import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import torch

from tqgen.compressed import CompressedTensor
from tqgen.ops import attention as attention_ops
from tqgen.ops import prefill_dequant
from tqgen.quant.packing import packed_width
from tqgen.spec import DECODE_MAX_Q, Family, VariantSpec, reduce_spec
from tqgen.tuning import launch_config, shape_bucket
from tqgen.tuning.cache import register_invalidator
from tqgen.tuning.prefill_route import prefill_method, to_original_space
from tqgen.validation import (
    FLOAT_DTYPES,
    as_last_dim_contiguous,
    bits_of_codebook,
    check_bits,
    check_gqa_group,
    check_norms,
    check_same_device,
    check_shape,
    check_tensor,
    check_vectors,
    forward_only,
    wants_grad,
)

KV = Union[torch.Tensor, CompressedTensor]
Schedule = Literal["auto", "prefill", "decode"]

__all__ = [
    "attention",
    "launch_attention",
    "triton_flash_attention",
    "triton_flash_attention_tq4",
    "triton_flash_attention_tq4_kv",
]


# ------------------------------------------------------------------- checks
def _check_kv(name: str, x: object, q: torch.Tensor) -> KV:
    """K or V: [B, H_kv, N_kv, D] in q's dtype, or a consistent CompressedTensor."""
    batch, _, _, head_dim = q.shape
    if isinstance(x, CompressedTensor):
        check_bits(f"{name}.bits", x.bits)
        if x.head_dim != head_dim:
            raise ValueError(f"{name}.head_dim is {x.head_dim} but q has head_dim {head_dim}")
        packed = check_tensor(f"{name}.packed", x.packed, ndim=4, dtypes=(torch.uint8,))
        width = packed_width(head_dim, x.bits)
        if packed.shape[-1] != width:
            raise ValueError(
                f"{name}.packed has {packed.shape[-1]} bytes per vector, but {x.bits}-bit codes of "
                f"head_dim {head_dim} take {width}: bits and packed width disagree"
            )
        check_shape(f"{name}.packed", packed, (batch, None, None, width), "[B, H_kv, N_kv, packed_width]")
        norms = check_norms(f"{name}.norms", x.norms, tuple(packed.shape[:3]))
        centroids = check_tensor(f"{name}.centroids", x.centroids, dtypes=FLOAT_DTYPES)
        if centroids.numel() != 1 << x.bits:
            raise ValueError(f"{name}.centroids must have {1 << x.bits} entries for {x.bits}-bit codes, got {centroids.numel()}")
        rotation = check_tensor(f"{name}.rotation", x.rotation, ndim=2, dtypes=FLOAT_DTYPES)
        check_shape(f"{name}.rotation", rotation, (head_dim, head_dim), "[D, D]")
        packed = as_last_dim_contiguous(packed)
        if packed is x.packed and norms is x.norms:
            return x
        return CompressedTensor(packed, norms, x.bits, head_dim, centroids, rotation)
    t = check_tensor(name, x, ndim=4)
    if t.dtype != q.dtype:
        raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    check_shape(name, t, (batch, None, None, head_dim), "[B, H_kv, N_kv, D]")
    return as_last_dim_contiguous(t)


def _check_shared_rotation(k: KV, v: KV) -> None:
    """Compressed K and V must share Pi: the output is rotated back once for both."""
    if not (isinstance(k, CompressedTensor) and isinstance(v, CompressedTensor)):
        return
    a, b = k.rotation, v.rotation
    if a is b or (a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.dtype == b.dtype):
        return
    if a.device != b.device or not torch.equal(a.to(torch.float32), b.to(torch.float32)):  # host sync, rare path
        raise ValueError("k.rotation and v.rotation differ: compressed K and V must share one rotation")


def _check_mask(mask: object, q: torch.Tensor, n_kv: int) -> torch.Tensor | None:
    """A bool (True = attend) or additive float mask, as a view broadcast to [B, H_q, N_q, N_kv]."""
    if mask is None:
        return None
    mask = check_tensor("attention_mask", mask, ndim=(1, 2, 3, 4), dtypes=(torch.bool, *FLOAT_DTYPES))
    target = (*q.shape[:3], n_kv)
    try:
        ok = torch.broadcast_shapes(tuple(mask.shape), target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"attention_mask of shape {tuple(mask.shape)} does not broadcast to [B, H_q, N_q, N_kv] = {target}"
        )
    return mask[(None,) * (4 - mask.dim())].expand(target)


def _check_out(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    check_tensor("out", out, ndim=4)
    if out.dtype != q.dtype:
        raise TypeError(f"out must have q's dtype {q.dtype}, got {out.dtype}")
    check_shape("out", out, tuple(q.shape), "[B, H_q, N_q, D]")
    if out.stride(-1) != 1:
        raise ValueError(f"out must have a unit stride along its last dim, got strides {out.stride()}")
    return out


# ----------------------------------------------------------- lean dispatch
@dataclass(frozen=True)
class _Plan:
    """What a call resolves to besides its sizes: the variant, for decode the reduce variant
    and its config (a reduce config has no shape bucket), and for compressed prefill what the
    dequantise method runs: the vanilla variant, and K's and V's decompress variants into the
    rotated space (index 0) and the original space (1) (``None`` when that operand is plain)."""

    decode: bool
    spec: VariantSpec
    reduce: VariantSpec | None
    reduce_config: dict[str, int] | None
    vanilla: VariantSpec | None = None
    k_codecs: tuple[VariantSpec, VariantSpec] | None = None
    v_codecs: tuple[VariantSpec, VariantSpec] | None = None


_PLAN_OF: dict[tuple, _Plan] = {}  # (decode, head_dim, k_bits, v_bits, group, causal, device) -> plan
_PLANS: dict[tuple, _Plan] = {}  # call signature (of a call that passed the checks) -> plan
_MAX_PLANS = 512  # distinct call signatures remembered (a model has a handful)


def _plan(decode: bool, head_dim: int, k_bits: int | None, v_bits: int | None, group: int, causal: bool,
          device: torch.device) -> _Plan:
    """The plan of a call, memoised (the memo is dropped with the configs: see ``_forget_plans``)."""
    key = (decode, head_dim, k_bits, v_bits, group, causal, device)
    plan = _PLAN_OF.get(key)
    if plan is None:
        family = Family.ATTN_DECODE if decode else Family.ATTN_PREFILL
        rotate = k_bits is not None or v_bits is not None
        spec = VariantSpec(family, head_dim, k_bits, v_bits, group, causal, rotate)
        if decode:
            reduce = reduce_spec(spec)
            plan = _Plan(decode, spec, reduce, launch_config(reduce, device))
        elif rotate:  # compressed prefill: also what the dequantise method needs
            vanilla = VariantSpec(family, head_dim, None, None, group, causal)
            k_codecs, v_codecs = (None if bits is None else (VariantSpec(Family.DECOMPRESS, head_dim, bits, rotate=False),
                                                             VariantSpec(Family.DECOMPRESS, head_dim, bits, rotate=True))
                                  for bits in (k_bits, v_bits))
            plan = _Plan(decode, spec, None, None, vanilla, k_codecs, v_codecs)
        else:
            plan = _Plan(decode, spec, None, None)
        if len(_PLAN_OF) >= _MAX_PLANS:
            _PLAN_OF.clear()
        _PLAN_OF[key] = plan
    return plan


@register_invalidator
def _forget_plans() -> None:
    """Plans hold reduce configs: forget them whenever the tune cache or an override changes."""
    _PLAN_OF.clear()
    _PLANS.clear()


def _operand_signature(x: object) -> tuple | None:
    """Everything validation looks at in K or V, except the KV length (it changes every step)."""
    if isinstance(x, CompressedTensor):
        p, n, c, r = x.packed, x.norms, x.centroids, x.rotation
        ps = p.shape
        return (x.bits, x.head_dim, p.dtype, p.get_device(), p.dim(), ps[0], ps[1], ps[-1], p.stride(),
                n.dtype, n.get_device(), n.dim(), n.stride(), c.dtype, c.get_device(), c.shape,
                r.dtype, r.get_device(), r.shape)
    if isinstance(x, torch.Tensor):
        s = x.shape
        return (x.dtype, x.get_device(), x.dim(), s[0], s[1], s[-1], x.stride())
    return None


def _signature(q: object, k: object, v: object, sm_scale: object, is_causal: object,
               mask: object, out: object, schedule: object) -> tuple | None:
    """A hashable description of a call that determines every check's outcome but N_kv's, or None."""
    if not isinstance(q, torch.Tensor):
        return None
    ks, vs = _operand_signature(k), _operand_signature(v)
    if ks is None or vs is None:
        return None
    if mask is None:
        ms = None
    elif isinstance(mask, torch.Tensor):
        ms = (mask.dtype, mask.get_device(), mask.shape[:-1])
    else:
        return None
    if out is None:
        os_ = None
    elif isinstance(out, torch.Tensor):
        os_ = (out.dtype, out.get_device(), out.shape, out.stride())
    else:
        return None
    return (q.dtype, q.get_device(), q.shape, q.stride(), ks, vs, sm_scale, is_causal, ms, os_, schedule)


def _kv_length(x: KV) -> int:
    return x.packed.shape[2] if isinstance(x, CompressedTensor) else x.shape[2]


def _lean_checks(q: torch.Tensor, k: KV, v: KV, mask: torch.Tensor | None) -> int | None:
    """The per-call checks a cached signature cannot cover; N_kv when they pass, else None."""
    n_kv = _kv_length(k)
    if n_kv == 0 or _kv_length(v) != n_kv:
        return None
    for x in (k, v):
        if isinstance(x, CompressedTensor) and x.norms.shape[2] != n_kv:
            return None
    if isinstance(k, CompressedTensor) and isinstance(v, CompressedTensor) and k.rotation is not v.rotation:
        return None  # the full check compares them
    if mask is not None and mask.shape[-1] not in (n_kv, 1):
        return None
    return n_kv


def _launch(plan: _Plan, q: torch.Tensor, k: KV, v: KV, out: torch.Tensor, scale: float,
            mask: torch.Tensor | None, n_kv: int, extra_partial: object = None) -> torch.Tensor:
    """Look up the launch config of this call's shape bucket and launch (every input is checked)."""
    batch, _, n_q, _ = q.shape
    spec = plan.spec
    if plan.vanilla is not None and prefill_method(spec, q.device) == "dequant":  # compressed prefill
        return _launch_dequantised(plan, q, k, v, out, scale, mask, n_kv)
    config = launch_config(spec, q.device, shape_bucket(spec, n_q, n_kv, batch * _kv_heads(k)))
    if not plan.decode:
        return attention_ops.prefill(spec, config, q, k, v, out, scale, mask)
    if extra_partial is not None:
        return attention_ops.decode(spec, config, plan.reduce, plan.reduce_config, q, k, v, out, scale, mask,
                                    extra_partial=extra_partial)
    return attention_ops.decode(spec, config, plan.reduce, plan.reduce_config, q, k, v, out, scale, mask)


def _launch_dequantised(plan: _Plan, q: torch.Tensor, k: KV, v: KV, out: torch.Tensor, scale: float,
                        mask: torch.Tensor | None, n_kv: int) -> torch.Tensor:
    """Compressed prefill by the dequantise method: decompress, then the vanilla variant (configs
    of this call; the space of K and V by ``to_original_space``)."""
    batch, q_heads, n_q, _ = q.shape
    kv_heads = _kv_heads(k)
    original = to_original_space(batch * q_heads * n_q, batch * kv_heads * n_kv)
    k_codec, v_codec = (None if codecs is None else (codecs[original], launch_config(codecs[original], q.device))
                        for codecs in (plan.k_codecs, plan.v_codecs))
    spec = plan.vanilla
    config = launch_config(spec, q.device, shape_bucket(spec, n_q, n_kv, batch * kv_heads))
    return prefill_dequant.prefill(spec, config, k_codec, v_codec, q, k, v, out, scale, mask)


def _launch_unchecked(plan: _Plan, q: torch.Tensor, k: KV, v: KV, sm_scale: float | None,
                      mask: torch.Tensor | None, out: torch.Tensor | None, n_kv: int,
                      extra_partial: object = None) -> torch.Tensor:
    """``_launch`` of arguments as a caller passed them, known to pass the checks: the default
    scale, the mask broadcast to [B, H_q, N_q, N_kv] and the output allocated here."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if mask is not None:
        mask = mask[(None,) * (4 - mask.dim())].expand(*q.shape[:3], n_kv)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return _launch(plan, q, k, v, out, scale, mask, n_kv, extra_partial)


def _kv_heads(x: KV) -> int:
    return x.packed.shape[1] if isinstance(x, CompressedTensor) else x.shape[1]


def _bits(x: KV) -> int | None:
    return x.bits if isinstance(x, CompressedTensor) else None


# --------------------------------------------------------------- dispatcher
def attention(
    q: torch.Tensor,
    k: KV,
    v: KV,
    sm_scale: float | None = None,
    is_causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    schedule: Schedule = "auto",
    extra_partial: object = None,
) -> torch.Tensor:
    """Softmax attention over plain or TurboQuant-compressed K/V.

    Args:
        q: ``[B, H_q, N_q, D]`` fp16/bf16/fp32 (any strides with a unit last-dim stride).
        k, v: ``[B, H_kv, N_kv, D]`` in q's dtype, or CompressedTensor (2/3/4 bits each;
            when both are compressed they must share the rotation).  ``H_q`` must be a
            multiple of ``H_kv`` (GQA groups up to 16).
        sm_scale: softmax scale, default ``1/sqrt(D)``.
        is_causal: bottom-right aligned causal mask (query i sees keys j <= i + N_kv - N_q),
            so chunked prefill onto a cache is right; rows that see no key output 0.
        attention_mask: bool (True = attend) or additive float mask broadcastable to
            ``[B, H_q, N_q, N_kv]``; combined with ``is_causal`` when both are given.
        out: optional ``[B, H_q, N_q, D]`` output buffer in q's dtype.  With it the
            decode path allocates nothing but a cached workspace and never syncs, so it
            can be captured in a CUDA graph.
        schedule: ``"auto"`` (decode for N_q <= 16, else prefill) or force one.
        extra_partial: decode only, internal: writes one more split-K partial that the reduce
            merges (``tqgen.ops.exact_tokens``: exact tokens beside compressed ones).

    Returns:
        ``[B, H_q, N_q, D]`` in q's dtype (``out`` when given).
    """
    if wants_grad(q, k, v, attention_mask):  # no backward: never return a result cut from the graph
        return forward_only("tqgen.attention", lambda: attention(
            q, k, v, sm_scale, is_causal, attention_mask, schedule=schedule, extra_partial=extra_partial),
            q, k, v, attention_mask, out=out)
    signature = _signature(q, k, v, sm_scale, is_causal, attention_mask, out, schedule)
    plan = _PLANS.get(signature) if signature is not None else None
    if plan is not None:
        n_kv = _lean_checks(q, k, v, attention_mask)
        if n_kv is not None:  # same checks as a call that passed them: go straight to the launch
            return _launch_unchecked(plan, q, k, v, sm_scale, attention_mask, out, n_kv, extra_partial)
    inputs = (q, k, v)
    q = check_vectors("q", q)
    batch, q_heads, n_q, head_dim = q.shape
    k = _check_kv("k", k, q)
    v = _check_kv("v", v, q)
    kv_heads, n_kv = k.shape[1], k.shape[2]
    if tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(f"v must match k's [B, H_kv, N_kv] = {tuple(k.shape[:3])}, got {tuple(v.shape[:3])}")
    group = check_gqa_group(q_heads, kv_heads)
    _check_shared_rotation(k, v)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
    if not math.isfinite(scale):
        raise ValueError(f"sm_scale must be finite, got {sm_scale}")
    mask = _check_mask(attention_mask, q, n_kv)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    else:
        out = _check_out(out, q)
    check_same_device(
        q=q,
        k=k.packed if isinstance(k, CompressedTensor) else k,
        v=v.packed if isinstance(v, CompressedTensor) else v,
        attention_mask=mask,
        out=out,
        **_codec_tensors(k, "k"),
        **_codec_tensors(v, "v"),
    )
    if schedule not in ("auto", "prefill", "decode"):
        raise ValueError(f"schedule must be 'auto', 'prefill' or 'decode', got {schedule!r}")
    decode = n_q <= DECODE_MAX_Q if schedule == "auto" else schedule == "decode"
    if decode and n_q > DECODE_MAX_Q:
        raise ValueError(f"the decode schedule takes at most {DECODE_MAX_Q} query positions, got N_q = {n_q}")

    if out.numel() == 0:
        return out
    if n_kv == 0:  # no key to attend to: every row is empty
        return out.zero_()

    plan = _plan(decode, head_dim, _bits(k), _bits(v), group, is_causal, q.device)
    if signature is not None and all(a is b for a, b in zip((q, k, v), inputs)):
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[signature] = plan
    return _launch(plan, q, k, v, out, scale, mask, n_kv, extra_partial)


def _codec_tensors(x: KV, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(x, CompressedTensor):
        return {}
    return {f"{name}.norms": x.norms, f"{name}.centroids": x.centroids, f"{name}.rotation": x.rotation}


def launch_attention(
    q: torch.Tensor,
    k: KV,
    v: KV,
    sm_scale: float | None = None,
    is_causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`attention` (``schedule="auto"``, no autograd) without its checks.

    For tqgen's own callers whose arguments pass every check of ``attention`` by construction,
    e.g. the Hugging Face backend reading the compressed buffers of its cache (checked when the
    cache and the backend were set up): per layer and step this skips even the signature lookup.
    Arguments that would fail a check give wrong results or a kernel error, not a clear message.
    Only q's last-dim stride is made unit here (as ``attention`` does).
    """
    q = as_last_dim_contiguous(q)
    n_kv = k.shape[2]
    if n_kv == 0 or q.shape[2] == 0 or q.shape[0] == 0:
        return attention(q, k, v, sm_scale, is_causal, attention_mask, out=out)  # the rare empty cases
    plan = _plan(q.shape[2] <= DECODE_MAX_Q, q.shape[-1], _bits(k), _bits(v), q.shape[1] // _kv_heads(k),
                 is_causal, q.device)
    return _launch_unchecked(plan, q, k, v, sm_scale, attention_mask, out, n_kv)


# ---------------------------------------------------- seed-compatible names
def _compressed(name: str, packed: torch.Tensor, norms: torch.Tensor, centroids: torch.Tensor,
                rotation: torch.Tensor, head_dim: int) -> CompressedTensor:
    """A CompressedTensor from seed-style arguments; the width comes from the codebook size."""
    bits = bits_of_codebook("centroids", centroids)
    check_tensor(f"{name}_packed", packed, ndim=4, dtypes=(torch.uint8,))
    width = packed_width(head_dim, bits)
    if packed.shape[-1] != width:
        raise ValueError(
            f"{name}_packed has {packed.shape[-1]} bytes per vector, but {centroids.numel()} centroids mean "
            f"{bits}-bit codes, which take {width} bytes for head_dim {head_dim}"
        )
    norms = check_norms(f"{name}_norms", norms, tuple(packed.shape[:3]))
    return CompressedTensor(packed, norms, bits, head_dim, centroids, rotation)


def _head_dim(q: torch.Tensor) -> int:
    return check_tensor("q", q, ndim=4, dtypes=FLOAT_DTYPES).shape[-1]


def triton_flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sm_scale: float | None = None,
    is_causal: bool = False,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FlashAttention over fp16/bf16/fp32 q ``[B, H_q, N_q, D]``, k/v ``[B, H_kv, N_kv, D]``."""
    return attention(q, k, v, sm_scale, is_causal, attention_mask)


def triton_flash_attention_tq4(
    q: torch.Tensor,
    k_packed: torch.Tensor,
    k_norms: torch.Tensor,
    centroids: torch.Tensor,
    rotation: torch.Tensor,
    v: torch.Tensor,
    sm_scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention with compressed K (``k_packed`` uint8, ``k_norms`` fp32 ``[B, H_kv, N]`` or
    ``[..., 1]``) and plain V; the bit width follows from ``centroids.numel()``."""
    k = _compressed("k", k_packed, k_norms, centroids, rotation, _head_dim(q))
    return attention(q, k, v, sm_scale, is_causal)


def triton_flash_attention_tq4_kv(
    q: torch.Tensor,
    k_packed: torch.Tensor,
    k_norms: torch.Tensor,
    v_packed: torch.Tensor,
    v_norms: torch.Tensor,
    centroids: torch.Tensor,
    rotation: torch.Tensor,
    sm_scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention with compressed K and V sharing one codebook and rotation."""
    head_dim = _head_dim(q)
    k = _compressed("k", k_packed, k_norms, centroids, rotation, head_dim)
    v = _compressed("v", v_packed, v_norms, centroids, rotation, head_dim)
    return attention(q, k, v, sm_scale, is_causal)
