"""Process-wide caches (codebooks, rotations, converted codebooks, workspaces) filled inside
``torch.inference_mode`` serve later calls outside it, and the other way round."""

from __future__ import annotations

import torch

from attention_inputs import random_length
from tqgen import TurboQuant, attention


def test_caches_filled_in_inference_mode_work_outside(device: str) -> None:
    head_dim = 2 * random_length(20, 40)  # a mode no other test is likely to have cached
    tq = TurboQuant(head_dim, 4)
    with torch.inference_mode():
        k = torch.randn(1, 2, 40, head_dim, device=device)
        kc, vc = tq.compress(k), tq.compress(k)
        q = torch.randn(1, 4, 1, head_dim, device=device).half()
        inside = attention(q, kc, vc)  # fp16 query: the codebook is converted and cached here
    q2 = q.clone()
    outside = attention(q2, tq.compress(k.clone()), tq.compress(k.clone()))
    assert torch.equal(inside, outside)
    assert not tq.centroids(device).is_inference() and not tq.rotation(device).is_inference()
