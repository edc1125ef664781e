"""Lean kernel launches: a generated kernel's compiled handle, reused without Triton's per-call binding.

``kernel(spec)[grid](*args, **constexprs)`` behaves like the ``@triton.jit`` function's own
launch, but after the first call for a given *specialization key* it calls the compiled
kernel's launcher directly.  Triton's own path re-binds every argument, rebuilds its cache
key (``str(options)`` included) and looks the kernel up on every call, which costs tens of
microseconds per launch; the key here is a tuple of what Triton specialises on:

* tensors: dtype and 16-byte alignment of the data pointer;
* ints: their value (finer than Triton's ``== 1`` / ``% 16 == 0`` classes), except parameters
  the kernel declares ``do_not_specialize`` (the KV length, split size, ...): only their
  32/64-bit range;
* everything else, constexprs and launch options: their values.

An unhashable argument, a kernel with defaulted parameters, an active launch hook or the CPU
interpreter take Triton's own launch every time, so the cache never changes what runs, only
how fast it is dispatched.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from tqgen.codegen import loader
from tqgen.spec import VariantSpec

_I32 = 1 << 31
_MAX_KEYS = 256  # compiled handles remembered per kernel


class LeanKernel:
    """A ``@triton.jit`` function whose launches reuse the compiled kernel per specialization key.

    Indexing with a grid returns a launcher taking the same arguments as the jit function's;
    positional arguments are the kernel's runtime parameters in order, keywords its constexprs
    and ``num_warps``/``num_stages``.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        names = list(getattr(fn, "arg_names", []) or [])
        self.arg_names = names
        # Triton's KernelParam records whether the decorator listed it in do_not_specialize.
        self._no_spec_idx = tuple(i for i, p in enumerate(getattr(fn, "params", None) or []) if p.do_not_specialize)
        self._compiled: dict[tuple, tuple[Any, tuple[str, ...]]] = {}
        self.direct_launches = 0  # launches that bypassed Triton's binding (for tests and profiling)
        self.enabled = _direct_launch_possible(fn)

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        return functools.partial(self._launch, grid)

    def _key(self, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """A key at least as fine as Triton's specialization of this call, or None when it cannot tell.

        Specialised ints enter with their value (finer than Triton's ``== 1`` / ``% 16`` classes,
        and steady across decode steps: strides, head counts); ``do_not_specialize`` ints only with
        their 32/64-bit range; tensors with dtype and 16-byte alignment.
        """
        tensor = torch.Tensor
        features = [a if type(a) is int else (a.dtype, not a.data_ptr() & 15) if isinstance(a, tensor) else a
                    for a in args]
        for i in self._no_spec_idx:
            if i < len(features):
                a = features[i]
                features[i] = ("i32", -_I32 <= a < _I32) if type(a) is int else a
        key = (torch.cuda.current_device(), tuple(features), tuple(kwargs.items()))
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def _launch(self, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> Any:
        key = self._key(args, kwargs) if self.enabled else None
        hit = self._compiled.get(key) if key is not None else None
        if hit is not None and not _launch_hooks():
            compiled, tail = hit
            values = (*args, *(kwargs[name] for name in tail))
            g1 = grid[1] if len(grid) > 1 else 1
            g2 = grid[2] if len(grid) > 2 else 1
            stream = torch._C._cuda_getCurrentRawStream(key[0])
            compiled.run(grid[0], g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *values)
            self.direct_launches += 1
            return compiled
        compiled = self.fn[grid](*args, **kwargs)
        if key is not None and _is_compiled_kernel(compiled):
            tail = tuple(self.arg_names[len(args):])
            if all(name in kwargs for name in tail):
                if len(self._compiled) >= _MAX_KEYS:  # e.g. a float argument that changes every call
                    self._compiled.clear()
                self._compiled[key] = (compiled, tail)
        return compiled


def _direct_launch_possible(fn: Any) -> bool:
    """Only real (GPU) jit functions have compiled handles to reuse."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - triton always ships it
        return False
    return isinstance(fn, JITFunction) and torch.cuda.is_available()


def _is_compiled_kernel(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("run", "function", "packed_metadata"))


def _launch_hooks() -> bool:
    """Whether Triton launch hooks are set (profilers set them); then every launch goes through Triton."""
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - triton < 3.4
        return False
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        # Triton >= 3.6 keeps a HookChain there, empty unless a profiler registered a hook.
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


@functools.lru_cache(maxsize=None)
def kernel(spec: VariantSpec) -> LeanKernel:
    """The generated kernel of ``spec``, wrapped for lean launches (one wrapper per variant)."""
    return LeanKernel(loader.kernel(spec))
