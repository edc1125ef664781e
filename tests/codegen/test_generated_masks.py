"""What the rendered kernels hold: no mask that is always true, one KV-tile body per attention kernel."""

from __future__ import annotations

import re

import pytest

from tqgen.codegen.render import render
from tqgen.spec import default_matrix

CHECKED = default_matrix()

ARANGE = re.compile(r"^\s*(\w+) = tl\.arange\(0, (\w+)\)", re.M)
# `for c in tl.static_range(0, N, W):` then `cols = c + tl.arange(0, W)`: cols spans [0, N)
CHUNKS = re.compile(r"for (\w+) in tl\.static_range\(0, (\w+), (\w+)\):\n\s+(\w+) = \1 \+ tl\.arange\(0, \3\)")
CONSTANT = re.compile(r"^(\w+) = tl\.constexpr\((\d+)\)", re.M)
# `x < bound` and `(P * x + k) < bound` / `(P * x) < bound`
BELOW = re.compile(r"(?:(?<![*+] )\b(\w+)|\((\d+) \* (\w+)(?: \+ (\d+))?\)) < (\w+)\b")


def always_true_masks(source: str) -> list[str]:
    """Conditions `index < bound` whose index is a tl.arange from 0 that never reaches the bound."""
    consts = {name: int(value) for name, value in CONSTANT.findall(source)}

    def value(token: str) -> int | None:
        return int(token) if token.isdigit() else consts.get(token)

    extent = {name: value(size) for name, size in ARANGE.findall(source)}
    extent.update({name: value(size) for _, size, _, name in CHUNKS.findall(source)})
    found = []
    for m in BELOW.finditer(source):
        plain, scale, scaled, offset, bound = m.groups()
        index = plain or scaled
        if extent.get(index) is None or value(bound) is None:
            continue
        top = extent[index] - 1
        if scale:
            top = int(scale) * top + int(offset or 0)
        if top < value(bound):
            found.append(m.group(0))
    return found


@pytest.mark.parametrize("family", sorted({s.family for s in CHECKED}, key=lambda f: f.value), ids=lambda f: f.value)
def test_no_mask_is_always_true(family):
    bad = {s.id: masks for s in CHECKED if s.family is family and (masks := always_true_masks(render(s)))}
    assert not bad, f"always-true masks: {bad}"


def test_the_checker_finds_always_true_masks():
    source = "HEAD_DIM = tl.constexpr(128)\n    j = tl.arange(0, 64)\n    m = (j < 64) & ((2 * j + 1) < HEAD_DIM)\n"
    assert always_true_masks(source) == ["j < 64", "(2 * j + 1) < HEAD_DIM"]
    chunked = "D_PAD = tl.constexpr(128)\n    for c in tl.static_range(0, D_PAD, 64):\n        cols = c + tl.arange(0, 64)\n"
    assert always_true_masks(chunked + "        ok = cols < 128\n") == ["cols < 128"]
    assert not always_true_masks(chunked + "        ok = cols < 80\n")
    assert not always_true_masks("HEAD_DIM = tl.constexpr(80)\n    d = tl.arange(0, 128)\n    m = (d < HEAD_DIM)\n")


@pytest.mark.parametrize("spec", [s for s in default_matrix() if s.family.is_attention][::37], ids=lambda s: s.id)
def test_attention_emits_the_tile_body_once(spec):
    """The KV-tile body lives in one @triton.jit function that both loops call: full tiles with
    BOUNDARY=False (no masks), boundary tiles with BOUNDARY=True."""
    source = render(spec)
    assert source.count("def _kv_tile(") == 1
    assert source.count("= _kv_tile(") == 2
    assert "BOUNDARY=False" in source and "BOUNDARY=True" in source
    assert source.count("m_new = tl.maximum(m_i, tl.max(s, 1))") == 1


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_code_layout_masks_exactly_what_can_be_out_of_range(bits):
    from tqgen.codegen.context import code_layout

    for d in range(32, 257, 2):
        code = code_layout(d, bits)
        assert code.plane_masked == any(j >= code.plane_width for j in range(code.plane_pad))
        for k in range(code.planes):
            assert code.coord_masked(k) == any(code.planes * j + k >= d for j in range(code.plane_pad))
