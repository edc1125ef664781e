"""Kernels written in Gluon (Triton's explicit-layout dialect) for Hopper GPUs (sm_90).

``decode_k4v4`` imports Gluon and is loaded only when a Hopper GPU runs it; ``lookup`` (the
codebook lookups as PTX) and ``query_planes`` (a plain Triton prologue) import anywhere.
"""
