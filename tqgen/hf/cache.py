"""A transformers ``Cache`` that stores K and V as TurboQuant codes, in place, with no full-precision copy.

Each compressed layer owns four preallocated buffers laid out like an attention K/V tensor along
``[batch, kv_heads, capacity, ...]``: the packed codes and the fp32 norms of K and of V (K and V
may use different widths).  Appending ``n`` tokens is one compress launch for K and one for V,
written at ``[length, length + n)``; when the capacity runs out the buffers grow geometrically
(one copy), so a decode step never concatenates.

Two ways to read the cache back:

* ``fused_mode`` (set by :func:`tqgen.hf.install_fused_tq4_kv`): ``update`` returns the current
  chunk's K/V unchanged and the fused attention backend reads the compressed buffers directly.
* otherwise ``update`` returns the decompressed K/V of the whole sequence, so the cache also works
  with SDPA/eager attention (with the compression error, and a decompression per step).

A prefill onto an empty layer attends over the exact K/V in both modes (``exact_prefill``): they
are at hand anyway, and it is both more accurate and faster than reading back what was just
compressed.  Later chunks (decode, chunked prefill) attend over the compressed history.

Layers can be left uncompressed by policy (``skip_layers``), and sliding-window layers always are
(transformers' own window layer keeps them bounded).  Layers of different head_dim each get their
own TurboQuant (rotation and codebook); layers of the same (head_dim, bits) share one.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer

from tqgen.compressed import CompressedTensor
from tqgen.ops.exact_tokens import ExactTokens
from tqgen.turboquant import TurboQuant
from tqgen.validation import FLOAT_DTYPES, check_batch_indices, check_bits, check_head_dim, check_tensor

SkipPolicy = Iterable[int] | Callable[[int], bool] | None

# Capacities are multiples of this many tokens, so a short prompt does not reallocate on every
# one of its first decode steps.
CAPACITY_GRANULE = 64


# Defaults of the exact tokens, chosen on SmolLM2-135M (README "Hugging Face models"): 4 sinks;
# no recent window (its decode cost is not measured on a GPU yet; 128 is the measured choice when
# it is wanted), compressed 64 at a time when there is one.
SINK_TOKENS = 4
RESIDUAL_LENGTH = 0
RESIDUAL_BLOCK = 64


def check_exact_options(sink_tokens: object, residual_length: object, residual_block: object) -> tuple[int, int, int]:
    """The exact-token options as ints: ``sink_tokens`` and ``residual_length`` >= 0, ``residual_block`` >= 1."""
    for name, value, low in (("sink_tokens", sink_tokens, 0), ("residual_length", residual_length, 0),
                             ("residual_block", residual_block, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return sink_tokens, residual_length, residual_block


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def cache_kwarg(model: object, method: str = "forward") -> str:
    """The keyword that ``model.forward`` (``method="forward"``) or ``model.generate``
    (``method="generate"``) takes the KV cache by in the installed transformers.

    Newer transformers 5.x take ``cache=`` and warn that ``past_key_values=`` is deprecated; older
    ones only know ``past_key_values=``.  Read from the signatures (``generate`` passes its cache
    on to ``prepare_inputs_for_generation``), not guessed from a version number.
    """
    if method not in ("forward", "generate"):
        raise ValueError(f"method must be 'forward' or 'generate', got {method!r}")
    name = "forward" if method == "forward" else "prepare_inputs_for_generation"
    fn = getattr(model, name, None)
    if fn is None:
        raise TypeError(f"model must be a transformers model with a `{name}` method, got {type(model).__name__}")
    params = inspect.signature(fn).parameters
    for keyword in ("cache", "past_key_values"):
        if keyword in params:
            return keyword
    raise TypeError(
        f"{type(model).__name__}.{name} takes neither `cache` nor `past_key_values`: cannot pass it a KV cache"
    )


def cache_kwargs(model: object, cache: object, method: str = "forward") -> dict[str, object]:
    """``{keyword: cache}`` for ``model.forward(**...)`` / ``model.generate(**...)``, see :func:`cache_kwarg`::

        model.generate(**inputs, **tqgen.hf.cache_kwargs(model, cache, "generate"), max_new_tokens=64)
    """
    return {cache_kwarg(model, method): cache}


@dataclass(frozen=True)
class LayerSizes:
    """Sizes of the layers of one kind (see :meth:`CompressedDynamicCache.size_report`).

    ``nbytes``: bytes allocated (capacity-based for tqgen's layers).  ``uncompressed_nbytes``: bytes
    the same tokens take in an uncompressed cache in the model's own dtype (the dtype of the K/V
    the layers were given).  ``ratio``: how many times smaller than that (nan when empty).
    """

    layers: int
    nbytes: int
    uncompressed_nbytes: int

    @property
    def ratio(self) -> float:
        return self.uncompressed_nbytes / self.nbytes if self.nbytes else float("nan")


class PreallocatedLayer(CacheLayerMixin):
    """A cache layer whose state is a few tensors shaped ``[batch, heads, capacity, ...]``.

    Subclasses say how to allocate the buffers and write new tokens into them; growing, cropping
    and the batch reorderings of beam search are the same for every layout and live here.
    """

    is_sliding = False
    is_croppable = True
    is_compileable = False

    def __init__(self, growth: float = 2.0, initial_capacity: int = 0) -> None:
        super().__init__()
        if growth <= 1.0:
            raise ValueError(f"growth must be > 1 (the factor the capacity grows by), got {growth}")
        self.growth = float(growth)
        self.initial_capacity = int(initial_capacity)
        self.length = 0
        self.capacity = 0
        self.reallocations = 0
        self._buffers: dict[str, torch.Tensor] = {}
        self.batch = self.kv_heads = 0

    # -- layout hooks -------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> dict[str, torch.Tensor]:
        """Fresh buffers for ``capacity`` tokens (contents undefined)."""
        raise NotImplementedError

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int) -> None:
        """Store the new tokens at positions ``[start, start + n)``."""
        raise NotImplementedError

    # -- transformers' layer interface ---------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Record dtype, device, batch and head counts from the first states seen."""
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch, self.kv_heads = key_states.shape[0], key_states.shape[1]
        self.key_dim, self.value_dim = key_states.shape[-1], value_states.shape[-1]
        self.is_initialized = True

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> int:
        """Write the new tokens after the current ones; returns where they start.

        Atomic: if anything raises, the layer is as before the call (a first update leaves it
        uninitialised, so a later call starts afresh instead of finding half-built state).
        """
        fresh = not self.is_initialized
        if fresh:
            self.lazy_initialization(key_states, value_states)
        try:
            expected = (self.batch, self.kv_heads)
            for name, states in (("key_states", key_states), ("value_states", value_states)):
                if tuple(states.shape[:2]) != expected:
                    raise ValueError(
                        f"{name} has batch/heads {tuple(states.shape[:2])} but this cache layer holds {expected}: "
                        "call cache.reset() before reusing the cache for a different batch"
                    )
            start, new = self.length, key_states.shape[-2]
            self.reserve(start + new)
            self._write(key_states, value_states, start)
        except BaseException:
            if fresh:
                self.reset()
            raise
        self.length = start + new
        return start

    def reserve(self, tokens: int) -> None:
        """Make room for ``tokens`` tokens, growing geometrically (one copy of the valid prefix)."""
        if tokens <= self.capacity:
            return
        capacity = max(tokens, math.ceil(self.capacity * self.growth), self.initial_capacity)
        # Normal (not inference) tensors, so that steps run in and out of torch.inference_mode
        # can both write into them.
        stored = self._stored()
        with torch.inference_mode(False):
            fresh = self._allocate(_round_up(capacity, CAPACITY_GRANULE))
            if stored:
                for name, old in self._buffers.items():
                    fresh[name][:, :, :stored].copy_(old[:, :, :stored])
        if self._buffers:
            self.reallocations += 1
        self._buffers = fresh
        self.capacity = next(iter(fresh.values())).shape[2]

    def _stored(self) -> int:
        """Tokens the buffers hold (copied when they grow)."""
        return self.length

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask spans every cached token plus the query: ``(length + query_length, offset 0)``."""
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        """-1: the layer grows without bound."""
        return -1

    def get_max_cache_shape(self) -> int:
        """Pre-5.16 name of :meth:`get_max_length`."""
        return self.get_max_length()

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (negative), or keep the first ``tokens_to_remove`` (positive, legacy)."""
        tokens_to_remove = int(tokens_to_remove)  # assisted decoding may pass a 0-d tensor
        if tokens_to_remove < 0:
            self.length = max(self.length + tokens_to_remove, 0)
        elif tokens_to_remove > 0:
            self.length = min(self.length, tokens_to_remove)

    def reset(self) -> None:
        """Forget the tokens and free the buffers; the next update may bring a new batch size."""
        self._buffers = {}
        self.length = self.capacity = 0
        self.is_initialized = False

    def _reindex_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if not self._buffers:
            return
        with torch.inference_mode(False):
            self._buffers = {name: fn(buffer) for name, buffer in self._buffers.items()}
        self.batch = next(iter(self._buffers.values())).shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` becomes old row ``beam_idx[i]``."""
        if self._buffers:
            check_batch_indices("beam_idx", beam_idx, self.batch)
        self._reindex_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._reindex_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._buffers:
            check_batch_indices("indices", indices, self.batch)
        self._reindex_batch(lambda t: t[indices])

    def offload(self) -> None:
        raise NotImplementedError("tqgen cache layers do not support offloading")

    def prefetch(self) -> None:
        raise NotImplementedError("tqgen cache layers do not support offloading")

    # -- sizes ---------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes allocated for this layer's buffers (capacity, not length)."""
        return sum(t.numel() * t.element_size() for t in self._buffers.values())

    def _elements(self) -> int:
        """K and V elements of the cached tokens, uncompressed."""
        if not self.is_initialized:
            return 0
        return self.batch * self.kv_heads * self.length * (self.key_dim + self.value_dim)

    def uncompressed_nbytes(self) -> int:
        """Bytes the cached tokens take uncompressed in the model's dtype (the dtype of the K/V given)."""
        return self._elements() * self.dtype.itemsize if self.is_initialized else 0

    def fp16_nbytes(self) -> int:
        """Bytes the cached tokens take uncompressed in a 16-bit dtype (2 bytes an element)."""
        return 2 * self._elements()


class FullPrecisionLayer(PreallocatedLayer):
    """An uncompressed layer (for layers the policy skips), preallocated and grown like the others."""

    def _allocate(self, capacity: int) -> dict[str, torch.Tensor]:
        shape = (self.batch, self.kv_heads, capacity)
        return {
            "keys": torch.empty(*shape, self.key_dim, dtype=self.dtype, device=self.device),
            "values": torch.empty(*shape, self.value_dim, dtype=self.dtype, device=self.device),
        }

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int) -> None:
        stop = start + key_states.shape[-2]
        self._buffers["keys"][:, :, start:stop].copy_(key_states)
        self._buffers["values"][:, :, start:stop].copy_(value_states)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append, and return views of every cached K/V (no copy)."""
        self._append(key_states, value_states)
        return self._buffers["keys"][:, :, : self.length], self._buffers["values"][:, :, : self.length]


class CompressedLayer(PreallocatedLayer):
    """K and V as TurboQuant codes + fp32 norms, in place.

    Args:
        key_quantizer / value_quantizer: factories ``head_dim -> TurboQuant`` (the cache shares
            one TurboQuant per (head_dim, bits) between layers).
        fused_mode: if True, ``update`` returns the new chunk itself and the fused attention
            backend reads :meth:`compressed`; else it returns decompressed K/V.
        exact_prefill: a first update (empty layer) returns/attends over its exact K/V.
        center_keys: store keys minus their per-head mean over the first chunk the layer sees
            (``key_offset``, fp32 ``[B, H_kv, 1, D]``).  Exact: the mean adds ``q . mu`` to every
            score of a query, which softmax ignores, so attention reads the codes as they are;
            the quantiser then spends its levels on what tells keys apart rather than on their
            common direction.  With sinks the mean is over the first chunk's tokens past the
            sinks (what the codes hold; all of the chunk when it has no more than the sinks).
        sink_tokens: the first this many tokens stay exact, in the model's dtype (attention
            sinks draw much of the attention and lose the most to quantisation).
        residual_length: the most recent tokens stay exact too: at least this many (once the
            sequence is long enough) and fewer than ``residual_length + residual_block``; when the
            window reaches that, its oldest ``residual_block`` tokens (a multiple of it) are
            compressed in one launch each for K and V.  0: every token past the sinks is
            compressed when it arrives.

    Token order: ``n_sinks`` exact sinks, ``n_mid`` compressed tokens, ``n_recent`` exact recent
    ones.  The exact tokens share one buffer ``[B, H_kv, sink_tokens + window capacity, D]``
    (sinks first, then the window), so :meth:`exact_tokens` is a view, not a copy.
    """

    def __init__(
        self,
        key_quantizer: Callable[[int], TurboQuant],
        value_quantizer: Callable[[int], TurboQuant],
        growth: float = 2.0,
        initial_capacity: int = 0,
        fused_mode: bool = False,
        exact_prefill: bool = True,
        layer_idx: int | None = None,
        center_keys: bool = True,
        sink_tokens: int = 0,
        residual_length: int = 0,
        residual_block: int = 64,
    ) -> None:
        super().__init__(growth=growth, initial_capacity=initial_capacity)
        self.sink_tokens, self.residual_length, self.residual_block = check_exact_options(
            sink_tokens, residual_length, residual_block)
        self.n_sinks = self.n_mid = self.n_recent = 0
        self._exact: dict[str, torch.Tensor] = {}
        self.center_keys = bool(center_keys)
        self.key_offset: torch.Tensor | None = None
        self._key_quantizer, self._value_quantizer = key_quantizer, value_quantizer
        self.layer_idx = layer_idx
        self.fused_mode = fused_mode
        self.exact_prefill = exact_prefill
        # The key tensor the last update returned when the fused backend must read the
        # compressed buffers for it (None: attend over the returned K/V as they are).
        self.fused_key: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Everything that may fail (an unsupported head_dim, say) runs before any state is set.
        where = "" if self.layer_idx is None else f"layer {self.layer_idx}: "
        quants = {}
        for prefix, name, states, factory in (
            ("k", "key_states", key_states, self._key_quantizer),
            ("v", "value_states", value_states, self._value_quantizer),
        ):
            check_tensor(f"{where}{name}", states, ndim=4, dtypes=FLOAT_DTYPES)  # exact tokens are stored as given
            head_dim = states.shape[-1]
            try:
                check_head_dim(f"{where}{name}", head_dim)
            except ValueError as err:
                raise ValueError(f"{err}: TurboQuant cannot compress it; keep the layer uncompressed with skip_layers") from None
            quants[prefix] = factory(head_dim)
        device = key_states.device
        # Codebook and rotation on the cache's device, looked up once rather than every step.
        tables = {prefix: (quant, quant.centroids(device), quant.rotation(device)) for prefix, quant in quants.items()}
        super().lazy_initialization(key_states, value_states)
        self.key_quant, self.value_quant = quants["k"], quants["v"]
        self._tables = tables

    def _allocate(self, capacity: int) -> dict[str, torch.Tensor]:
        k = self.key_quant.empty(self.batch, self.kv_heads, capacity, self.device)
        v = self.value_quant.empty(self.batch, self.kv_heads, capacity, self.device)
        return {"k_packed": k.packed, "k_norms": k.norms, "v_packed": v.packed, "v_norms": v.norms}

    def _view(self, prefix: str, length: int) -> CompressedTensor:
        """The first ``length`` tokens of K (prefix "k") or V ("v") as a CompressedTensor of views."""
        quant, centroids, rotation = self._tables[prefix]
        return CompressedTensor(
            packed=self._buffers[f"{prefix}_packed"][:, :, :length],
            norms=self._buffers[f"{prefix}_norms"][:, :, :length],
            bits=quant.bits,
            head_dim=quant.head_dim,
            centroids=centroids,
            rotation=rotation,
            offset=self.key_offset if prefix == "k" else None,
        )

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int) -> None:
        # New tokens fill the sinks first, then the recent window; what leaves the window (or,
        # with no window, every token past the sinks) is compressed straight into the capacity
        # buffers, one launch each for K and V.  The compress runs before any exact buffer
        # changes and the counters and the key offset are set last, so a failure changes nothing.
        n = key_states.shape[2]
        to_sinks = min(n, self.sink_tokens - self.n_sinks)
        rest = n - to_sinks
        from_window, from_chunk = self._roll(rest)
        offset = self.key_offset
        if self.center_keys and offset is None:  # the first chunk: the mean of its tokens past the sinks
            with torch.inference_mode(False):
                offset = key_states[:, :, to_sinks if rest else 0:].detach().float().mean(dim=2, keepdim=True)
        if from_window + from_chunk:
            keys, values = key_states[:, :, to_sinks:to_sinks + from_chunk], value_states[:, :, to_sinks:to_sinks + from_chunk]
            if from_window:  # the window's oldest tokens, then the chunk's first: one launch
                oldest = slice(self.sink_tokens, self.sink_tokens + from_window)
                keys = torch.cat([self._exact["keys"][:, :, oldest], keys], dim=2)
                values = torch.cat([self._exact["values"][:, :, oldest], values], dim=2)
            if offset is not None:
                keys = keys - offset.to(keys.dtype)
            self.key_quant.compress(keys, out=self._view("k", self.capacity), start=self.n_mid)
            self.value_quant.compress(values, out=self._view("v", self.capacity), start=self.n_mid)
        kept = rest - from_chunk  # chunk tokens that join the window (the chunk's last ones)
        survivors = self.n_recent - from_window  # window tokens that stay, moved to its front
        window = self.sink_tokens
        if to_sinks or kept or (from_window and survivors):
            self._reserve_exact()
            for name, states in (("keys", key_states), ("values", value_states)):
                buf = self._exact[name]
                if to_sinks:
                    buf[:, :, self.n_sinks:self.n_sinks + to_sinks].copy_(states[:, :, :to_sinks])
                if from_window and survivors:
                    buf[:, :, window:window + survivors].copy_(buf[:, :, window + from_window:window + self.n_recent].clone())
                if kept:
                    buf[:, :, window + survivors:window + survivors + kept].copy_(states[:, :, n - kept:])
        self.n_sinks += to_sinks
        self.n_mid += from_window + from_chunk
        self.n_recent = survivors + kept
        self.key_offset = offset

    def reserve(self, tokens: int) -> None:
        """Make room for a sequence of ``tokens`` tokens: codes for those past the sinks and the
        smallest window (at least one buffer granule, so the compressed view always exists)."""
        needed = max(tokens - self.sink_tokens - self.residual_length, self.n_mid, 1)
        super().reserve(needed)

    def _stored(self) -> int:
        return self.n_mid

    def _roll(self, rest: int) -> tuple[int, int]:
        """How many of the window's oldest tokens and of the ``rest`` new ones past the sinks get
        compressed now (window first): the window is brought below ``residual_length +
        residual_block`` tokens by compressing a multiple of ``residual_block``."""
        if not self.residual_length:
            return 0, rest
        total = self.n_recent + rest
        if total < self.residual_length + self.residual_block:
            return 0, 0
        count = (total - self.residual_length) // self.residual_block * self.residual_block
        from_window = min(count, self.n_recent)
        return from_window, count - from_window

    def _exact_capacity(self) -> int:
        """Exact tokens the layer ever holds: the sinks and the largest window."""
        window = self.residual_length + self.residual_block - 1 if self.residual_length else 0
        return self.sink_tokens + window

    def _reserve_exact(self) -> None:
        """Allocate the exact tokens' buffer (once: its size is fixed by the options)."""
        if self._exact:
            return
        shape = (self.batch, self.kv_heads, self._exact_capacity())
        with torch.inference_mode(False):
            self._exact = {
                "keys": torch.empty(*shape, self.key_dim, dtype=self.dtype, device=self.device),
                "values": torch.empty(*shape, self.value_dim, dtype=self.dtype, device=self.device),
            }

    def exact_tokens(self) -> ExactTokens | None:
        """The exact sinks and recent tokens (views of the buffer), or None when the layer keeps
        none by its options (sink_tokens = residual_length = 0)."""
        if not self._exact_capacity():
            return None
        count = self.n_sinks + self.n_recent
        if not self._exact:
            empty = torch.empty(self.batch, self.kv_heads, 0, self.key_dim, dtype=self.dtype, device=self.device)
            return ExactTokens(empty, empty, 0)
        return ExactTokens(self._exact["keys"][:, :, :count], self._exact["values"][:, :, :count], self.n_sinks)

    def nbytes(self) -> int:
        """Bytes allocated for this layer: the codes and norms (capacity, not length) and the exact tokens."""
        return super().nbytes() + sum(t.numel() * t.element_size() for t in self._exact.values())

    def _reindex_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super()._reindex_batch(fn)
        with torch.inference_mode(False):
            if self.key_offset is not None:
                self.key_offset = fn(self.key_offset)
            self._exact = {name: fn(buffer) for name, buffer in self._exact.items()}
        if self._exact:
            self.batch = self._exact["keys"].shape[0]

    def compressed(self) -> tuple[CompressedTensor, CompressedTensor]:
        """K and V of the compressed tokens (all but the exact sinks and window), as
        CompressedTensors viewing the buffers (no copy)."""
        return self._view("k", self.n_mid), self._view("v", self.n_mid)

    def decompressed(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of every cached token in ``dtype`` (default: the model's): the compressed ones
        decompressed, the exact sinks and window as they are."""
        dtype = dtype or self.dtype
        k, v = self.compressed()
        keys, values = self.key_quant.decompress(k, dtype=dtype), self.value_quant.decompress(v, dtype=dtype)
        exact = self.exact_tokens()
        if exact is None or not exact.count:
            return keys, values
        head = exact.n_head
        return (torch.cat([exact.keys[:, :, :head].to(dtype), keys, exact.keys[:, :, head:].to(dtype)], dim=2),
                torch.cat([exact.values[:, :, :head].to(dtype), values, exact.values[:, :, head:].to(dtype)], dim=2))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compress the new tokens into the buffers; return what attention should read (see module doc)."""
        start = self._append(key_states, value_states)
        exact = self.exact_prefill and start == 0
        self.fused_key = key_states if self.fused_mode and not exact else None
        if self.fused_mode or exact:
            return key_states, value_states
        return self.decompressed()

    def crop(self, tokens_to_remove: int) -> None:
        """Drop tokens from the end (see :meth:`PreallocatedLayer.crop`): the window's first, then
        compressed ones, then sinks.  Compressed tokens stay compressed: the window refills with
        the tokens that come next."""
        super().crop(tokens_to_remove)
        self.fused_key = None
        self.n_sinks = min(self.n_sinks, self.length)
        self.n_mid = min(self.n_mid, self.length - self.n_sinks)
        self.n_recent = self.length - self.n_sinks - self.n_mid

    def reset(self) -> None:
        super().reset()
        self.fused_key = None
        self.key_offset = None
        self._exact = {}
        self.n_sinks = self.n_mid = self.n_recent = 0


def _is_sliding(config: object, layer_idx: int) -> bool:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return layer_types[layer_idx] in ("sliding_attention", "chunked_attention")
    return getattr(config, "sliding_window", None) is not None or getattr(config, "attention_chunk_size", None) is not None


def _window(config: object, layer_idx: int) -> int:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_idx] == "chunked_attention":
        return config.attention_chunk_size
    return getattr(config, "sliding_window", None) or config.attention_chunk_size


class CompressedDynamicCache(Cache):
    """TurboQuant-compressed KV cache for transformers models.

    Pass it as ``cache=`` (``past_key_values=`` on transformers that predate the rename;
    :func:`cache_kwargs` picks the right one).

    Args:
        config: the model's config (or text config). With it, layers are built up front and
            sliding-window layers are recognised; without it, layers are created on first use.
        k_bits / v_bits: code widths of K and V (2, 3 or 4).
        skip_layers: layers to keep uncompressed: indices (negative ones count from the end; needs
            ``config`` or ``num_layers``; out-of-range indices are an error) or a predicate
            ``layer_idx -> bool``.
        num_layers: the layer count when no config is given (for negative ``skip_layers``).
        seed: rotation seed (42 matches turboquant_vllm, so either package reads the other's codes).
        growth: factor the capacity grows by when full (> 1).
        initial_capacity: tokens the first allocation holds at least (size it to prompt + new
            tokens to allocate once, with no slack beyond :data:`CAPACITY_GRANULE`).
        exact_prefill: attend over the exact K/V when a layer receives its first tokens.
        center_keys: store each compressed layer's keys minus their per-head mean (see
            :class:`CompressedLayer`; exact under softmax).
        sink_tokens: the first this many tokens of every compressed layer stay exact, in the
            model's dtype (default 4, chosen by measurement: README).
        residual_length / residual_block: the most recent tokens stay exact too, at least
            ``residual_length`` of them (default 0: no window; 128 is the measured choice) and
            fewer than ``residual_length + residual_block``; they are compressed
            ``residual_block`` (default 64) at a time.  Attention reads exact and compressed
            tokens in one call (:mod:`tqgen.ops.exact_tokens`).
    """

    def __init__(
        self,
        config: object | None = None,
        *,
        k_bits: int = 4,
        v_bits: int = 4,
        skip_layers: SkipPolicy = None,
        num_layers: int | None = None,
        seed: int = 42,
        growth: float = 2.0,
        initial_capacity: int = 0,
        exact_prefill: bool = True,
        center_keys: bool = True,
        sink_tokens: int = SINK_TOKENS,
        residual_length: int = RESIDUAL_LENGTH,
        residual_block: int = RESIDUAL_BLOCK,
    ) -> None:
        self.k_bits = check_bits("k_bits", k_bits)
        self.sink_tokens, self.residual_length, self.residual_block = check_exact_options(
            sink_tokens, residual_length, residual_block)
        self.center_keys = bool(center_keys)
        self.v_bits = check_bits("v_bits", v_bits)
        self.seed = seed
        self.growth, self.initial_capacity, self.exact_prefill = growth, initial_capacity, exact_prefill
        self._fused_mode = False
        self._quantizers: dict[tuple[int, int], TurboQuant] = {}
        self._config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        if self._config is not None:
            num_layers = self._config.num_hidden_layers
        self.num_layers = num_layers
        self._skip = self._skip_predicate(skip_layers, num_layers)
        layers = [self._make_layer(i) for i in range(num_layers)] if self._config is not None else []
        if self._config is not None:
            self._check_head_dims(layers)
        super().__init__(layers=layers)

    # -- policy ----------------------------------------------------------------------------------
    @staticmethod
    def _skip_predicate(skip_layers: SkipPolicy, num_layers: int | None) -> Callable[[int], bool]:
        if skip_layers is None:
            return lambda idx: False
        if callable(skip_layers):
            return skip_layers
        if isinstance(skip_layers, (str, bytes)) or not isinstance(skip_layers, Iterable):
            raise TypeError(
                f"skip_layers must be layer indices or a predicate layer_idx -> bool, got {type(skip_layers).__name__}"
            )
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0):
            raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
        indices = set()
        for idx in skip_layers:
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise TypeError(f"skip_layers must hold int layer indices, got {idx!r}")
            if num_layers is not None and not -num_layers <= idx < num_layers:
                raise ValueError(
                    f"skip_layers index {idx} is out of range for a model of {num_layers} layers "
                    f"(valid: {-num_layers} to {num_layers - 1})"
                )
            if idx < 0:
                if num_layers is None:
                    raise ValueError("negative skip_layers need the layer count: pass config= or num_layers=")
                idx += num_layers
            indices.add(idx)
        return indices.__contains__

    def _check_head_dims(self, layers: list[CacheLayerMixin]) -> None:
        """Refuse, at construction, a compressed layer whose head_dim TurboQuant cannot compress."""
        config = self._config
        head_dim = getattr(config, "head_dim", None)
        if head_dim is None:
            hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
            if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
                head_dim = hidden // heads
        if isinstance(head_dim, bool) or not isinstance(head_dim, int):
            return  # not derivable from the config: checked when the layer first sees K/V
        for idx, layer in enumerate(layers):
            if isinstance(layer, CompressedLayer):
                try:
                    check_head_dim(f"layer {idx}", head_dim)
                except ValueError as err:
                    raise ValueError(
                        f"{err} (config.head_dim): TurboQuant cannot compress it; keep such layers "
                        "uncompressed with skip_layers"
                    ) from None

    def quantizer(self, head_dim: int, bits: int) -> TurboQuant:
        """The TurboQuant for (head_dim, bits), shared by every layer that uses it."""
        key = (head_dim, bits)
        if key not in self._quantizers:
            self._quantizers[key] = TurboQuant(head_dim, bits, seed=self.seed)
        return self._quantizers[key]

    def _make_layer(self, layer_idx: int) -> CacheLayerMixin:
        if self._config is not None and _is_sliding(self._config, layer_idx):
            return DynamicSlidingWindowLayer(sliding_window=_window(self._config, layer_idx))
        if self._skip(layer_idx):
            return FullPrecisionLayer(growth=self.growth, initial_capacity=self.initial_capacity)
        return CompressedLayer(
            key_quantizer=lambda d: self.quantizer(d, self.k_bits),
            value_quantizer=lambda d: self.quantizer(d, self.v_bits),
            growth=self.growth,
            initial_capacity=self.initial_capacity,
            fused_mode=self._fused_mode,
            exact_prefill=self.exact_prefill,
            layer_idx=layer_idx,
            center_keys=self.center_keys,
            sink_tokens=self.sink_tokens,
            residual_length=self.residual_length,
            residual_block=self.residual_block,
        )

    def is_compressed(self, layer_idx: int) -> bool:
        return layer_idx < len(self.layers) and isinstance(self.layers[layer_idx], CompressedLayer)

    # -- fused attention side channel --------------------------------------------------------------
    @property
    def fused_mode(self) -> bool:
        """True while the fused backend is installed: ``update`` then keeps no full-precision K/V."""
        return self._fused_mode

    @fused_mode.setter
    def fused_mode(self, value: bool) -> None:
        self._fused_mode = bool(value)
        for layer in self.layers:
            if isinstance(layer, CompressedLayer):
                layer.fused_mode = self._fused_mode
                layer.fused_key = None

    def fused_kv(self, layer_idx: int | None, key: torch.Tensor) -> tuple[CompressedTensor, CompressedTensor] | None:
        """Compressed K/V for the fused backend, if ``key`` is what this cache's ``update`` just returned
        for ``layer_idx`` and attention must read the compressed history; else None."""
        if layer_idx is None or not self.is_compressed(layer_idx):
            return None
        layer = self.layers[layer_idx]
        if layer.fused_key is None or layer.fused_key is not key:
            return None
        return layer.compressed()

    def exact_tokens(self, layer_idx: int | None) -> ExactTokens | None:
        """The exact sinks and recent tokens of compressed layer ``layer_idx`` that attention reads
        beside :meth:`fused_kv`'s compressed ones, or None (no such layer, or none kept by the options)."""
        if layer_idx is None or not self.is_compressed(layer_idx):
            return None
        return self.layers[layer_idx].exact_tokens()

    # -- transformers' cache interface ---------------------------------------------------------------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new K/V of ``layer_idx`` (accepts 5.0's ``cache_kwargs`` and none)."""
        while len(self.layers) <= layer_idx:
            self.layers.append(self._make_layer(len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        """Pre-5.16 name of ``get_max_length``."""
        return self.get_max_length(layer_idx)

    def _batch_size(self) -> int | None:
        for layer in self.layers:
            if isinstance(layer, PreallocatedLayer) and layer.is_initialized:
                return layer.batch
            keys = getattr(layer, "keys", None)
            if getattr(layer, "is_initialized", False) and isinstance(keys, torch.Tensor):
                return keys.shape[0]
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` of every layer becomes old row ``beam_idx[i]``."""
        batch = self._batch_size()
        if batch is not None:
            check_batch_indices("beam_idx", beam_idx, batch)
        super().reorder_cache(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` of every layer."""
        batch = self._batch_size()
        if batch is not None:
            check_batch_indices("indices", indices, batch)
        super().batch_select_indices(indices)

    def reserve(self, tokens: int) -> None:
        """Make every initialised layer hold ``tokens`` tokens without reallocating."""
        for layer in self.layers:
            if isinstance(layer, PreallocatedLayer) and layer.is_initialized:
                layer.reserve(tokens)

    # -- sizes ---------------------------------------------------------------------------------------
    @staticmethod
    def layer_kind(layer: CacheLayerMixin) -> str:
        """``"compressed"``, ``"uncompressed"`` (kept full precision by ``skip_layers``) or ``"sliding"``
        (a sliding-window/chunked layer: transformers' own, uncompressed, bounded by its window)."""
        if isinstance(layer, CompressedLayer):
            return "compressed"
        if isinstance(layer, PreallocatedLayer):
            return "uncompressed"
        return "sliding" if getattr(layer, "is_sliding", False) else "uncompressed"

    @staticmethod
    def _layer_sizes(layer: CacheLayerMixin) -> tuple[int, int, int]:
        """(allocated bytes, bytes uncompressed in the model's dtype, bytes uncompressed in 16 bits)."""
        if isinstance(layer, PreallocatedLayer):
            return layer.nbytes(), layer.uncompressed_nbytes(), layer.fp16_nbytes()
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not getattr(layer, "is_initialized", False) or not isinstance(keys, torch.Tensor):
            return 0, 0, 0
        held = sum(t.numel() * t.element_size() for t in (keys, values))
        return held, held, 2 * (keys.numel() + values.numel())

    def size_report(self) -> dict[str, LayerSizes]:
        """Sizes per layer kind (:meth:`layer_kind`), e.g. for a sliding-window model::

            {"compressed": LayerSizes(layers=3, nbytes=..., uncompressed_nbytes=...),
             "sliding": LayerSizes(layers=15, ...)}

        ``uncompressed_nbytes`` is measured in the model's own dtype (fp32 K/V count 4 bytes an
        element), so each kind's ``ratio`` compares like with like.  Kinds with no layer are left out.
        """
        totals: dict[str, list[int]] = {}
        for layer in self.layers:
            entry = totals.setdefault(self.layer_kind(layer), [0, 0, 0])
            held, uncompressed, _ = self._layer_sizes(layer)
            entry[0] += 1
            entry[1] += held
            entry[2] += uncompressed
        return {kind: LayerSizes(*entry) for kind, entry in totals.items()}

    def nbytes(self) -> int:
        """Bytes allocated for the cached K/V (codes + norms of compressed layers, capacity-based)."""
        return sum(self._layer_sizes(layer)[0] for layer in self.layers)

    def uncompressed_nbytes(self) -> int:
        """Bytes an uncompressed cache in the model's own dtype would use for the same tokens
        (what a ``DynamicCache`` holds; sliding-window layers count what they hold)."""
        return sum(self._layer_sizes(layer)[1] for layer in self.layers)

    def fp16_nbytes(self) -> int:
        """Bytes an uncompressed 16-bit cache would use for the same tokens (2 bytes an element,
        whatever the model's dtype)."""
        return sum(self._layer_sizes(layer)[2] for layer in self.layers)

    def compression_ratio(self) -> float:
        """``uncompressed_nbytes() / nbytes()``: how many times smaller than an uncompressed cache in
        the model's own dtype (about 3.7 at 4 bits, D=128, for fp16/bf16 models; twice that for fp32).
        :meth:`size_report` gives it per layer kind."""
        allocated = self.nbytes()
        return self.uncompressed_nbytes() / allocated if allocated else float("nan")

    def __repr__(self) -> str:
        return (
            f"CompressedDynamicCache(k_bits={self.k_bits}, v_bits={self.v_bits}, layers={len(self.layers)}, "
            f"tokens={self.get_seq_length()}, sink_tokens={self.sink_tokens}, "
            f"residual_length={self.residual_length}, fused_mode={self.fused_mode})"
        )
