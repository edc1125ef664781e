"""Lean launches: LeanKernel's specialization key and direct launcher (with a stand-in for a
compiled Triton kernel, since the CPU interpreter has none), and attention()'s plan cache."""

import importlib

import pytest
import torch

from tqgen.attention import attention
from tqgen.ops.launch import LeanKernel
from tqgen.turboquant import TurboQuant

dispatch = importlib.import_module("tqgen.attention")  # the module (the package exports the function)


class _Param:
    def __init__(self, do_not_specialize: bool) -> None:
        self.do_not_specialize = do_not_specialize


class _Compiled:
    """Stands in for triton's CompiledKernel: records what its launcher gets."""

    function, packed_metadata = "fn", "meta"

    def __init__(self) -> None:
        self.launches: list[tuple] = []

    def run(self, *args):
        self.launches.append(args)


class _Jit:
    """Stands in for a @triton.jit function (x, stride, n (do_not_specialize), BLOCK constexpr)."""

    arg_names = ["x", "stride", "n", "BLOCK"]
    params = [_Param(False), _Param(False), _Param(True), _Param(False)]

    def __init__(self) -> None:
        self.jit_launches = 0
        self.compiled: list[_Compiled] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.jit_launches += 1
            self.compiled.append(_Compiled())
            return self.compiled[-1]
        return launch


@pytest.fixture
def lean(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 7, raising=False)
    jit = _Jit()
    kernel = LeanKernel(jit)
    kernel.enabled = True
    return jit, kernel


def test_direct_launch_reuses_the_compiled_kernel(lean):
    jit, kernel = lean
    x = torch.zeros(64)
    kernel[(3,)](x, 16, 100, BLOCK=32, num_warps=4)
    assert jit.jit_launches == 1
    kernel[(5, 2)](x, 16, 101, BLOCK=32, num_warps=4)  # only the do_not_specialize int changed
    assert jit.jit_launches == 1 and kernel.direct_launches == 1
    (launch,) = jit.compiled[0].launches
    assert launch[:6] == (5, 2, 1, 7, "fn", "meta")
    assert launch[9] is x and launch[10:] == (16, 101, 32)  # runtime args, then the constexpr


@pytest.mark.parametrize("change", ["stride", "dtype", "alignment", "constexpr", "options", "n_range"])
def test_anything_triton_specialises_on_goes_back_to_triton(lean, change):
    jit, kernel = lean
    x = torch.zeros(64)
    args, kwargs = [x, 16, 100], {"BLOCK": 32, "num_warps": 4}
    kernel[(1,)](*args, **kwargs)
    if change == "stride":
        args[1] = 1
    elif change == "dtype":
        args[0] = torch.zeros(64, dtype=torch.float16)
    elif change == "alignment":
        args[0] = x[1:]
    elif change == "constexpr":
        kwargs["BLOCK"] = 64
    elif change == "options":
        kwargs["num_warps"] = 8
    else:
        args[2] = 1 << 40
    kernel[(1,)](*args, **kwargs)
    assert jit.jit_launches == 2 and kernel.direct_launches == 0


def test_unhashable_arguments_take_tritons_path(lean):
    jit, kernel = lean
    for _ in range(2):
        kernel[(1,)](torch.zeros(4), [1, 2], 3, BLOCK=16)
    assert jit.jit_launches == 2 and kernel.direct_launches == 0


def test_plan_cache_gives_the_same_output_and_still_validates(device):
    """A repeated call (plan reused, checks skipped) = the first; a call differing in a checked
    property still raises; a longer KV (a decode step) reuses the plan with the right length."""
    dispatch._PLANS.clear()
    tq = TurboQuant(64, 4)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 1, 64, generator=gen).to(device)
    cache_k = tq.empty(1, 2, 64, device)
    cache_v = tq.empty(1, 2, 64, device)
    tq.compress(torch.randn(1, 2, 48, 64, generator=gen).to(device), out=cache_k)
    tq.compress(torch.randn(1, 2, 48, 64, generator=gen).to(device), out=cache_v)

    def view(ct, n):
        return type(ct)(ct.packed[:, :, :n], ct.norms[:, :, :n], ct.bits, ct.head_dim, ct.centroids, ct.rotation)

    first = attention(q, view(cache_k, 40), view(cache_v, 40))
    assert len(dispatch._PLANS) == 1
    again = attention(q, view(cache_k, 40), view(cache_v, 40))
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    longer = attention(q, view(cache_k, 48), view(cache_v, 48))
    assert len(dispatch._PLANS) == 1
    fresh = dispatch._PLANS.clear() or attention(q, view(cache_k, 48), view(cache_v, 48))
    torch.testing.assert_close(longer, fresh, rtol=0, atol=0)
    with pytest.raises(ValueError, match="v must match"):
        attention(q, view(cache_k, 48), view(cache_v, 40))
    with pytest.raises(TypeError, match="q's dtype"):
        attention(q, view(cache_k, 48), torch.zeros(1, 2, 48, 64, dtype=torch.float64, device=device))
