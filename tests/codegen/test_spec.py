"""The variant spec: ids, validation, the default matrix."""

import re

import pytest

from tqgen.spec import Family, VariantSpec, default_matrix, select


@pytest.mark.parametrize(
    "spec, expected",
    [
        (VariantSpec(Family.ATTN_DECODE, 128, 4, 4, 4, True, True), "attn_decode_d128_k4v4_g4_causal_rot"),
        (VariantSpec(Family.ATTN_PREFILL, 64, None, None, 1), "attn_prefill_d64_fp_g1"),
        (VariantSpec(Family.ATTN_PREFILL, 96, 4, None, 8, False, True), "attn_prefill_d96_k4vfp_g8_rot"),
        (VariantSpec(Family.ATTN_PREFILL, 80, 4, 3, 2, True, True), "attn_prefill_d80_k4v3_g2_causal_rot"),
        (VariantSpec(Family.COMPRESS, 128, 3, rotate=True), "compress_d128_b3_rot"),
        (VariantSpec(Family.DECOMPRESS, 256, 2), "decompress_d256_b2"),
        (VariantSpec(Family.SCORES, 128, 4, group=4), "scores_d128_k4_g4"),
        (VariantSpec(Family.DECODE_REDUCE, 128, rotate=True), "decode_reduce_d128_rot"),
    ],
)
def test_ids_are_readable(spec, expected):
    assert spec.validate().id == expected


def test_matrix_ids_are_unique_filename_safe_and_valid():
    specs = list(default_matrix())
    ids = [s.id for s in specs]
    assert len(ids) == len(set(ids))
    for s in specs:
        s.validate()
        assert re.fullmatch(r"[a-z0-9_]+", s.id), s.id
    families = {s.family for s in specs}
    assert families == set(Family)


def test_matrix_covers_the_promised_axes():
    specs = list(default_matrix())
    attn = [s for s in specs if s.family.is_attention]
    assert {s.head_dim for s in attn} >= {32, 64, 80, 96, 128, 256}
    assert {(s.k_bits, s.v_bits) for s in attn} >= {(None, None), (4, None), (4, 4), (3, 3), (2, 2), (4, 3)}
    assert {s.causal for s in attn} == {False, True}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(family=Family.ATTN_PREFILL, head_dim=127), "head_dim"),
        (dict(family=Family.ATTN_PREFILL, head_dim=16), "head_dim"),
        (dict(family=Family.ATTN_PREFILL, head_dim=512), "head_dim"),
        (dict(family=Family.ATTN_PREFILL, head_dim=128, k_bits=5), "k_bits"),
        (dict(family=Family.ATTN_PREFILL, head_dim=128, v_bits=1), "v_bits"),
        (dict(family=Family.ATTN_PREFILL, head_dim=128, group=0), "group"),
        (dict(family=Family.ATTN_PREFILL, head_dim=128, group=17), "group"),
        (dict(family=Family.ATTN_PREFILL, head_dim=128, rotate=True), "rotate"),
        (dict(family=Family.COMPRESS, head_dim=128, rotate=True), "k_bits"),
        (dict(family=Family.COMPRESS, head_dim=128, k_bits=4), "rotate"),
        (dict(family=Family.COMPRESS, head_dim=128, k_bits=4, rotate=True, causal=True), "causal"),
        (dict(family=Family.DECOMPRESS, head_dim=128, k_bits=4, v_bits=4), "v_bits"),
        (dict(family=Family.SCORES, head_dim=128, k_bits=4, rotate=True), "rotate"),
        (dict(family=Family.DECODE_REDUCE, head_dim=128, k_bits=4), "decode_reduce"),
    ],
)
def test_invalid_variants_raise_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VariantSpec(**kwargs).validate()


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError):
        VariantSpec("attn_backward", 128)


def test_select_by_glob_or_substring():
    specs = list(default_matrix())
    assert all(s.family is Family.COMPRESS for s in select(specs, "compress_*"))
    sub = select(specs, "d128_k4v4_g4")
    assert sub and all("d128_k4v4_g4" in s.id for s in sub)
    assert select(specs, None) == specs
