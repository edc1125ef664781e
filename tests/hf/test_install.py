"""Switching a model onto tqgen's backends and back (tqgen.hf.install)."""

from __future__ import annotations

import pytest

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen.hf import CompressedDynamicCache


def test_uninstall_fused_undoes_a_fused_install_only():
    """The seed's uninstall_fused_tq4_kv undoes install_fused_tq4_kv; disable undoes install_triton_fa too."""
    model = tiny_causal_lm("llama", head_dim=32, attn_implementation="eager")
    tqgen.hf.install_triton_fa(model)
    tqgen.hf.uninstall_fused_tq4_kv(model)  # no cache attached: nothing to undo
    assert model.config._attn_implementation == tqgen.hf.TRITON_FA
    tqgen.hf.disable(model)
    assert model.config._attn_implementation == "eager"

    cache = CompressedDynamicCache(model.config)
    tqgen.hf.install_fused_tq4_kv(model, cache)
    assert model.config._attn_implementation == tqgen.hf.TRITON_FA_TQ4_KV and cache.fused_mode
    tqgen.hf.uninstall_fused_tq4_kv(model)
    assert model.config._attn_implementation == "eager" and not cache.fused_mode
    assert not any(hasattr(m, "_tq4_cache") for m in model.modules())


def test_gqa_groups_over_16_are_refused_at_install():
    """The fused backend trusts the model's shapes per step: what the kernels cannot take fails here."""
    model = tiny_causal_lm("llama", head_dim=32, heads=34, kv_heads=2, hidden=34 * 32)
    with pytest.raises(ValueError, match="GQA groups of at most 16"):
        tqgen.hf.enable(model)
    with pytest.raises(ValueError, match="GQA groups of at most 16"):
        tqgen.hf.install_triton_fa(model)
