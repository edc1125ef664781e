"""tqgen.ops.derived: values derived from small tensors, cached by the memory they view."""

from __future__ import annotations

import torch

from tqgen.ops import derived


def _count(kind: str, t: torch.Tensor, calls: list[int]) -> torch.Tensor:
    def make() -> torch.Tensor:
        calls.append(1)
        return t * 2

    return derived(kind, t, None, make)


def test_a_fresh_view_of_the_same_memory_hits():
    """torch.compile passes custom ops new view objects of the same buffers on every call."""
    t, calls = torch.randn(16), []
    first = _count("test_view", t, calls)
    again = _count("test_view", t.view(16), calls)
    assert again is first and len(calls) == 1


def test_in_place_changes_and_other_tensors_miss():
    t, calls = torch.randn(16), []
    _count("test_miss", t, calls)
    _count("test_miss", t.clone(), calls)  # equal values, other memory
    t.mul_(3)  # same memory, new version
    value = _count("test_miss", t, calls)
    assert len(calls) == 3
    torch.testing.assert_close(value, t * 2)


def test_a_different_layout_of_the_same_memory_misses():
    t, calls = torch.randn(4, 4), []
    _count("test_layout", t, calls)
    value = _count("test_layout", t.t(), calls)
    assert len(calls) == 2
    torch.testing.assert_close(value, t.t() * 2)
