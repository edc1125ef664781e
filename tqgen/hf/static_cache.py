"""A fixed-capacity TurboQuant KV cache for transformers' static-cache path (``torch.compile``, CUDA graphs).

:class:`CompressedStaticCache` allocates every buffer once (codes and fp32 norms of K and V for
``max_cache_len`` tokens per compressed layer, one shared decode workspace) and never
reallocates, so ``torch.compile(model, fullgraph=True)`` and ``mode="reduce-overhead"`` can
capture whole decode steps.  New tokens are compressed by ``tqgen::compress`` and written with
``index_copy_`` at ``cumulative_length + arange(n)``, a device tensor like transformers' own
``StaticLayer`` keeps; nothing on the step path reads a length back to the host.

Attention (:func:`static_attention_forward`, registered as ``triton_fa_tq_static``) reads the
whole capacity of a compressed layer through ``tqgen::decode_attention`` (or
``tqgen::prefill_attention`` for prompts longer than 16 tokens); the mask transformers builds
for a static cache (bool, ``[B, 1, N_q, max_cache_len]``) hides unwritten slots and padding.
Unwritten slots hold norm 0 and decode to zero vectors.  Layers kept uncompressed
(``skip_layers``) use transformers' ``StaticLayer``, sliding-window layers its
``StaticSlidingWindowLayer``, and the same kernels read them uncompressed.

Unlike :class:`~tqgen.hf.cache.CompressedDynamicCache`, a prompt attends over its compressed
K/V (the dynamic cache's ``exact_prefill=False``): whether a chunk is the first is a length
the compiled graph does not look at.

Exact sinks (``sink_tokens``, default 4 as in the dynamic cache) fit fixed shapes: positions
``[0, S)`` are written into an exact buffer of S + 1 slots and the others into the compressed
buffers of ``max_cache_len - S + 1`` slots, each write sending the tokens that do not belong
there to the last (scratch) slot, so one ``index_copy_`` per buffer serves every chunk.
Attention reads the S exact slots and the ``max_cache_len - S`` compressed ones in one call
(``tqgen::decode_attention_exact``; prompts over 16 tokens: the compressed slots decompressed
by plain torch ops and the prefill kernel over the whole capacity).  A recent-token window
(the dynamic cache's ``residual_length``) is not supported: it would roll a length-dependent
block into the codes inside the graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, StaticLayer, StaticSlidingWindowLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tqgen.hf.backends import _check_supported, _is_causal
from tqgen.hf.cache import SINK_TOKENS, SkipPolicy, _is_sliding, _window, check_exact_options
from tqgen.ops import library
from tqgen.ops.exact_tokens import decompress_torch, exact_workspace_numel
from tqgen.ops.library import attention_op
from tqgen.turboquant import TurboQuant
from tqgen.validation import check_bits

TRITON_FA_TQ_STATIC = "triton_fa_tq_static"

__all__ = [
    "TRITON_FA_TQ_STATIC",
    "CompressedStaticCache",
    "CompressedStaticLayer",
    "cache_argument",
    "install_static_cache",
    "register_static_backend",
    "static_attention_forward",
]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class CompressedStaticLayer(StaticLayer):
    """K and V of one layer as TurboQuant codes + fp32 norms in buffers of ``max_cache_len`` tokens.

    ``update`` stores the new tokens and returns them unchanged: the backend reads the buffers.
    It refuses to run when the fused backend is not installed (``fused_mode`` False), since
    any other attention would then see only the new tokens.  With ``center_keys`` the keys are
    stored minus the per-head mean of the first chunk after allocation or ``reset`` (its tokens
    past the sinks; ``key_offset``, a fixed buffer), exact under softmax as in the dynamic cache.
    The first ``sink_tokens`` positions stay exact in ``sink_keys``/``sink_values`` (module doc).
    """

    is_compileable = True
    is_sliding = False

    def __init__(self, max_cache_len: int, key_quant: Callable[[int], TurboQuant],
                 value_quant: Callable[[int], TurboQuant], workspace: Callable[[torch.device, int], torch.Tensor],
                 q_heads: int | None = None, center_keys: bool = True, sink_tokens: int = 0) -> None:
        super().__init__(max_cache_len=max_cache_len)
        self.sink_tokens = sink_tokens
        # Compressed slots: positions [S, max_cache_len), plus a scratch slot when S > 0.
        self.mid_len = max_cache_len - sink_tokens
        self._key_quant, self._value_quant, self._workspace = key_quant, value_quant, workspace
        self.q_heads = q_heads
        self.fused_mode = False
        self.center_keys = bool(center_keys)
        self._offset_pending = self.center_keys  # the next update's chunk sets key_offset

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the buffers for the batch, heads, dtype and device of the first states."""
        self.device, self.dtype = key_states.device, key_states.dtype
        self.batch_size, self.num_heads = key_states.shape[:2]
        self.k_head_dim, self.v_head_dim = key_states.shape[-1], value_states.shape[-1]
        self.key_quant, self.value_quant = self._key_quant(self.k_head_dim), self._value_quant(self.v_head_dim)
        if self.key_quant.rotation("cpu").shape != self.value_quant.rotation("cpu").shape:
            raise ValueError(
                f"key head_dim {self.k_head_dim} != value head_dim {self.v_head_dim}: compressed K and V must share "
                "one rotation; keep this layer uncompressed with skip_layers"
            )
        with torch.inference_mode(False):
            shape = (self.batch_size, self.num_heads, self.mid_len + (1 if self.sink_tokens else 0))
            kw, vw = self.key_quant.packed_width, self.value_quant.packed_width
            sinks = (self.batch_size, self.num_heads, self.sink_tokens + 1 if self.sink_tokens else 0)
            self.sink_keys = torch.zeros(*sinks, self.k_head_dim, dtype=self.dtype, device=self.device)
            self.sink_values = torch.zeros(*sinks, self.v_head_dim, dtype=self.dtype, device=self.device)
            self.k_packed = torch.zeros(*shape, kw, dtype=torch.uint8, device=self.device)
            self.k_norms = torch.zeros(shape, dtype=torch.float32, device=self.device)
            self.v_packed = torch.zeros(*shape, vw, dtype=torch.uint8, device=self.device)
            self.v_norms = torch.zeros(shape, dtype=torch.float32, device=self.device)
            self.key_offset = torch.zeros(self.batch_size, self.num_heads, 1, self.k_head_dim, dtype=torch.float32,
                                          device=self.device)
            # Codebooks in the model's dtype and the fp32 rotation/boundaries, on the device once.
            self.k_centroids = self.key_quant.centroids(self.device).to(self.dtype).clone()
            self.v_centroids = self.value_quant.centroids(self.device).to(self.dtype).clone()
            self.rotation = self.key_quant.rotation(self.device).to(torch.float32).clone()
            self.k_boundaries = self.key_quant.boundaries(self.device).to(torch.float32).clone()
            self.v_boundaries = self.value_quant.boundaries(self.device).to(torch.float32).clone()
            self.cumulative_length = self.cumulative_length.to(self.device)
        q_heads = self.q_heads or self.num_heads
        numel = exact_workspace_numel if self.sink_tokens else library.decode_workspace_numel
        exact = {"exact_tokens": self.sink_tokens} if self.sink_tokens else {}
        need = max(
            numel(self.batch_size, q_heads, self.num_heads, n_q, self.k_head_dim, self.mid_len,
                  self.key_quant.bits, self.value_quant.bits, self.device, causal, **exact)
            for n_q in (1, library.DECODE_MAX_Q) for causal in (False, True)
        )
        # Uncompressed layers of the same shape (sliding, skipped) share the workspace too.
        need = max(need, library.decode_workspace_numel(self.batch_size, q_heads, self.num_heads, library.DECODE_MAX_Q,
                                                        self.k_head_dim, self.max_cache_len, 0, 0, self.device))
        self.workspace = self._workspace(self.device, need)
        # HF's generic code (reset, batch reorders) knows `keys`/`values`: point them at the codes.
        self.keys, self.values = self.k_packed, self.v_packed
        self.derived: list[torch.Tensor] = []  # values the ops derive from the codebooks and rotation
        if not _compiling():  # fixed addresses: compiled graphs and CUDA graphs may mutate them
            for t in self._tensors():
                torch._dynamo.mark_static_address(t)
            self.derived = library.derive_constants(self.dtype, self.key_quant.bits, self.value_quant.bits,
                                                    self.k_centroids, self.v_centroids, self.rotation)
        self.is_initialized = True

    def _tensors(self) -> list[torch.Tensor]:
        """Every tensor this layer allocated (the shared workspace excluded), with the values the ops
        derived from its codebooks and rotation."""
        return [self.k_packed, self.k_norms, self.v_packed, self.v_norms, self.k_centroids, self.v_centroids,
                self.rotation, self.k_boundaries, self.v_boundaries, self.cumulative_length, self.key_offset,
                self.sink_keys, self.sink_values, *self.derived]

    def _kv_tensors(self) -> list[torch.Tensor]:
        """The K/V storage: codes, norms and the exact sinks."""
        return [self.k_packed, self.k_norms, self.v_packed, self.v_norms, self.sink_keys, self.sink_values]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress the new tokens into the buffers at ``cumulative_length + arange(n)``; return them."""
        if not self.fused_mode:
            raise RuntimeError(
                "CompressedStaticCache is read only by tqgen's static backend: call "
                "tqgen.hf.enable(model, static=True, ...) (or install_static_cache(model, cache)) first"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        positions = torch.arange(n, device=self.device) + self.cumulative_length
        self.cumulative_length.add_(n)
        if self.center_keys:
            if self._offset_pending:  # the prompt (eager in generate): a Python-side, one-time step
                past_sinks = key_states[:, :, self.sink_tokens if n > self.sink_tokens else 0:]
                self.key_offset.copy_(past_sinks.detach().float().mean(dim=2, keepdim=True))
                self._offset_pending = False
            key_states_stored = key_states - self.key_offset.to(key_states.dtype)
        else:
            key_states_stored = key_states
        if self.sink_tokens:  # tokens that do not belong in a buffer go to its scratch slot
            sink = self.sink_tokens
            self.sink_keys.index_copy_(2, positions.clamp(max=sink), key_states)
            self.sink_values.index_copy_(2, positions.clamp(max=sink), value_states)
            positions = torch.where(positions >= sink, positions - sink, self.mid_len)
        kp, kn = torch.ops.tqgen.compress(key_states_stored, self.rotation, self.k_boundaries, self.key_quant.bits)
        vp, vn = torch.ops.tqgen.compress(value_states, self.rotation, self.v_boundaries, self.value_quant.bits)
        self.k_packed.index_copy_(2, positions, kp)
        self.k_norms.index_copy_(2, positions, kn)
        self.v_packed.index_copy_(2, positions, vp)
        self.v_norms.index_copy_(2, positions, vn)
        return key_states, value_states

    def attend(self, query: torch.Tensor, mask: torch.Tensor | None, scaling: float | None,
               is_causal: bool) -> torch.Tensor:
        """Attention of ``query`` ``[B, H_q, N_q, D]`` over every slot of this layer (mask hides the unwritten)."""
        if not self.sink_tokens:
            return attention_op(query, self.k_packed, self.k_norms, self.k_centroids, self.key_quant.bits,
                                self.v_packed, self.v_norms, self.v_centroids, self.value_quant.bits,
                                self.rotation, mask, self.workspace, scaling, is_causal)
        mid, sink = slice(0, self.mid_len), slice(0, self.sink_tokens)
        scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
        offset = self.key_offset if self.center_keys else None
        if query.shape[2] <= library.DECODE_MAX_Q:
            return torch.ops.tqgen.decode_attention_exact(
                query, self.k_packed[:, :, mid], self.k_norms[:, :, mid], self.k_centroids, self.key_quant.bits,
                self.v_packed[:, :, mid], self.v_norms[:, :, mid], self.v_centroids, self.value_quant.bits,
                self.rotation, mask, self.workspace, scale, is_causal,
                self.sink_keys[:, :, sink], self.sink_values[:, :, sink], self.sink_tokens, offset)
        # A long prompt: the whole capacity in the model's dtype through the prefill kernel.
        keys = decompress_torch(self.k_packed[:, :, mid], self.k_norms[:, :, mid], self.key_quant.bits,
                                self.k_centroids, self.rotation, offset, query.dtype)
        values = decompress_torch(self.v_packed[:, :, mid], self.v_norms[:, :, mid], self.value_quant.bits,
                                  self.v_centroids, self.rotation, None, query.dtype)
        keys = torch.cat([self.sink_keys[:, :, sink], keys], dim=2)
        values = torch.cat([self.sink_values[:, :, sink], values], dim=2)
        return torch.ops.tqgen.prefill_attention(query, keys, None, None, 0, values, None, None, 0, None, mask,
                                                 scale, is_causal)

    def reset(self) -> None:
        """Forget every token (zero the buffers in place: their addresses stay)."""
        if self.is_initialized:
            for t in (*self._kv_tensors(), self.key_offset):
                t.zero_()
        self.cumulative_length.zero_()
        self._offset_pending = self.center_keys

    def nbytes(self) -> int:
        """Bytes this layer allocated (codes, norms, codebooks, rotation, length)."""
        if not self.is_initialized:
            return 0
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _reindex_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for name in ("k_packed", "k_norms", "v_packed", "v_norms", "key_offset", "sink_keys", "sink_values"):
            buffer = getattr(self, name)
            buffer.copy_(fn(buffer))  # in place: the static addresses stay valid

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._reindex_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("CompressedStaticCache has a fixed batch size; build it for the expanded batch")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("CompressedStaticCache has a fixed batch size")


class CompressedStaticCache(Cache):
    """TurboQuant-compressed static KV cache: fixed capacity, for ``torch.compile`` and CUDA graphs.

    Args:
        config: the model's config (layer count, sliding-window layers, query heads).
        max_cache_len: tokens every full-attention layer holds (prompt + new tokens, at most).
        k_bits / v_bits: code widths of K and V (2, 3 or 4).
        skip_layers: layers kept uncompressed (indices, negative from the end, or a predicate).
        seed: rotation seed (42 = turboquant_vllm's).
        center_keys: store keys minus the first chunk's per-head mean (exact under softmax).
        sink_tokens: the first this many positions stay exact in the model's dtype (default 4,
            as the dynamic cache; must be below ``max_cache_len``).
        residual_length: must be 0: the static cache keeps no recent-token window (module doc).

    Buffers are allocated on the first ``update`` (the prompt), or ahead of time with
    ``early_initialization(batch_size, num_heads, head_dim, dtype, device)``.  Pass the cache to
    ``generate``/``forward`` under the name :func:`cache_argument` returns, after installing the
    backend (``tqgen.hf.enable(model, static=True, max_cache_len=...)`` does both).
    """

    @property
    def max_cache_len(self) -> int:
        """Tokens every full-attention layer holds.  (A property of its own: transformers 5.17's
        ``Cache`` defines a read-only ``max_cache_len`` that an assignment would hit.)"""
        return self._max_cache_len

    def __init__(self, config: object, max_cache_len: int, *, k_bits: int = 4, v_bits: int = 4,
                 skip_layers: SkipPolicy = None, seed: int = 42, center_keys: bool = True,
                 sink_tokens: int = SINK_TOKENS, residual_length: int = 0) -> None:
        if isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len < 1:
            raise ValueError(f"max_cache_len must be an int >= 1, got {max_cache_len!r}")
        sink_tokens, residual_length, _ = check_exact_options(sink_tokens, residual_length, 1)
        if residual_length:
            raise NotImplementedError(
                f"CompressedStaticCache keeps no exact recent-token window (residual_length={residual_length}): "
                "rolling it into the codes needs shapes that change with the length; pass residual_length=0 "
                "(exact sinks are supported), or use the dynamic cache"
            )
        if sink_tokens >= max_cache_len:
            raise ValueError(f"sink_tokens ({sink_tokens}) must be below max_cache_len ({max_cache_len})")
        self.sink_tokens = sink_tokens
        if config is None:
            raise ValueError("config is required: the cache builds every layer up front")
        self.k_bits = check_bits("k_bits", k_bits)
        self.v_bits = check_bits("v_bits", v_bits)
        self.seed, self._max_cache_len = seed, max_cache_len
        self._config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        self._quantizers: dict[tuple[int, int], TurboQuant] = {}
        self._workspaces: list[torch.Tensor] = []
        self._largest_workspace: torch.Tensor | None = None
        self._fused_mode = False
        num_layers = self._config.num_hidden_layers
        from tqgen.hf.cache import CompressedDynamicCache

        skip = CompressedDynamicCache._skip_predicate(skip_layers, num_layers)
        q_heads = getattr(self._config, "num_attention_heads", None)
        layers = []
        for idx in range(num_layers):
            if _is_sliding(self._config, idx):
                layers.append(StaticSlidingWindowLayer(max_cache_len=max_cache_len, sliding_window=_window(self._config, idx)))
            elif skip(idx):
                layers.append(StaticLayer(max_cache_len=max_cache_len))
            else:
                layers.append(CompressedStaticLayer(
                    max_cache_len,
                    key_quant=lambda d: self.quantizer(d, self.k_bits),
                    value_quant=lambda d: self.quantizer(d, self.v_bits),
                    workspace=self._workspace,
                    q_heads=q_heads,
                    center_keys=center_keys,
                    sink_tokens=sink_tokens,
                ))
        super().__init__(layers=layers)

    def quantizer(self, head_dim: int, bits: int) -> TurboQuant:
        """The TurboQuant for (head_dim, bits), shared by every layer that uses it."""
        key = (head_dim, bits)
        if key not in self._quantizers:
            self._quantizers[key] = TurboQuant(head_dim, bits, seed=self.seed)
        return self._quantizers[key]

    def _workspace(self, device: torch.device, numel: int) -> torch.Tensor:
        """A decode workspace of at least ``numel`` fp32 elements, shared by the layers (run one at a time)."""
        for ws in self._workspaces:
            if ws.device == device and ws.numel() >= numel:
                return ws
        with torch.inference_mode(False):
            ws = torch.zeros(numel, dtype=torch.float32, device=device)
        if not _compiling():
            torch._dynamo.mark_static_address(ws)
        self._workspaces.append(ws)
        if self._largest_workspace is None or ws.numel() > self._largest_workspace.numel():
            self._largest_workspace = ws
        return ws

    def is_compressed(self, layer_idx: int) -> bool:
        return isinstance(self.layers[layer_idx], CompressedStaticLayer)

    @property
    def fused_mode(self) -> bool:
        """True while the static backend is installed (set by :func:`install_static_cache`)."""
        return self._fused_mode

    @fused_mode.setter
    def fused_mode(self, value: bool) -> None:
        self._fused_mode = bool(value)
        for layer in self.layers:
            if isinstance(layer, CompressedStaticLayer):
                layer.fused_mode = self._fused_mode

    # -- sizes ---------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes the cache allocated: codes, norms and tables of compressed layers, the K/V of
        uncompressed layers, and the decode workspace (capacity-based: it never grows)."""
        total = sum(ws.numel() * ws.element_size() for ws in self._workspaces)
        for layer in self.layers:
            if isinstance(layer, CompressedStaticLayer):
                total += layer.nbytes()
            elif getattr(layer, "is_initialized", False):
                total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values, layer.cumulative_length))
        return total

    def kv_nbytes(self) -> int:
        """Bytes of the K/V storage alone (codes + norms and exact sinks, uncompressed layers' K/V)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompressedStaticLayer) and layer.is_initialized:
                total += sum(t.numel() * t.element_size() for t in layer._kv_tensors())
            elif getattr(layer, "is_initialized", False):
                total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
        return total

    def fp16_nbytes(self) -> int:
        """Bytes a 16-bit ``StaticCache`` of the same capacity would allocate for K/V."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompressedStaticLayer) and layer.is_initialized:
                total += 2 * layer.batch_size * layer.num_heads * layer.max_cache_len * (layer.k_head_dim + layer.v_head_dim)
            elif getattr(layer, "is_initialized", False):
                total += 2 * (layer.keys.numel() + layer.values.numel())
        return total

    def compression_ratio(self) -> float:
        """``fp16_nbytes() / kv_nbytes()`` (about 3.7 at 4 bits, head_dim 128)."""
        kv = self.kv_nbytes()
        return self.fp16_nbytes() / kv if kv else float("nan")

    def __repr__(self) -> str:
        return (f"CompressedStaticCache(k_bits={self.k_bits}, v_bits={self.v_bits}, layers={len(self.layers)}, "
                f"max_cache_len={self.max_cache_len}, sink_tokens={self.sink_tokens}, fused_mode={self.fused_mode})")


# ------------------------------------------------------------------- backend
def static_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention function over a :class:`CompressedStaticCache` (traceable, no graph break).

    A compressed layer attends over its whole buffer (the mask hides unwritten slots); any other
    layer attends over the ``key``/``value`` its cache layer returned.  Both through tqgen's
    custom ops, so ``torch.compile(fullgraph=True)`` sees single ops.
    """
    _check_supported(dropout, kwargs)
    is_causal = _is_causal(module, query, attention_mask, kwargs)
    cache = getattr(module, "_tq4_cache", None)
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if isinstance(cache, CompressedStaticCache) and layer_idx is not None else None
    if isinstance(layer, CompressedStaticLayer) and layer.is_initialized:
        out = layer.attend(query, attention_mask, scaling, is_causal)
    else:
        workspace = _plain_workspace(cache, query, key)
        out = attention_op(query, key, None, None, 0, value, None, None, 0, None, attention_mask, workspace,
                           scaling, is_causal)
    return out.transpose(1, 2).contiguous(), None


def _plain_workspace(cache: object, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The decode workspace for an uncompressed layer: the cache's (sized up front), else a fresh one."""
    batch, q_heads, n_q, head_dim = query.shape
    if n_q > library.DECODE_MAX_Q:
        return query.new_empty(0, dtype=torch.float32)
    if isinstance(cache, CompressedStaticCache) and not _compiling():
        need = library.decode_workspace_numel(batch, q_heads, key.shape[1], n_q, head_dim, key.shape[2], 0, 0,
                                              query.device)
        return cache._workspace(query.device, need)
    if isinstance(cache, CompressedStaticCache) and cache._largest_workspace is not None:
        return cache._largest_workspace
    need = library.decode_workspace_numel(batch, q_heads, key.shape[1], n_q, head_dim, key.shape[2], 0, 0, query.device)
    return torch.empty(need, dtype=torch.float32, device=query.device)


def install_static_cache(model: torch.nn.Module, cache: CompressedStaticCache) -> None:
    """Run ``model``'s attention over ``cache`` (``triton_fa_tq_static``): stash the cache on every
    attention module and put it in ``fused_mode``; :func:`tqgen.hf.uninstall_fused_tq4_kv` undoes it."""
    from tqgen.hf.install import attach_cache

    if not isinstance(cache, CompressedStaticCache):
        raise TypeError(f"cache must be a CompressedStaticCache, got {type(cache).__name__}")
    attach_cache(model, cache, register_static_backend, TRITON_FA_TQ_STATIC)


def register_static_backend() -> None:
    """Register ``triton_fa_tq_static`` with ``AttentionInterface`` and (:func:`static_mask`) ``AttentionMaskInterface``."""
    AttentionInterface.register(TRITON_FA_TQ_STATIC, static_attention_forward)
    AttentionMaskInterface.register(TRITON_FA_TQ_STATIC, static_mask)


def static_mask(*args: object, **kwargs: object) -> torch.Tensor | None:
    """``sdpa_mask`` that always materialises the mask.  The backend reads every slot of the
    capacity, so it cannot take ``mask=None`` + ``is_causal`` as SDPA does: transformers skips the
    mask of an unpadded prompt, and the prompt then attended over the unwritten slots too."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword ``model``'s forward (and ``generate``) takes its cache under: ``"cache"`` in
    transformers >= 5.24, ``"past_key_values"`` before.  Read from the forward's signature."""
    forward = getattr(type(model), "forward", None)
    params = inspect.signature(forward).parameters if forward is not None else {}
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`")
