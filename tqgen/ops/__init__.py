"""Thin launchers of the generated kernels.

Each module validates its inputs (clear errors naming the argument), picks the
variant and its launch config (``tqgen.tuning``), and launches one kernel.  They
allocate only the outputs the caller did not pass and never poison them.
"""
