"""``python -m tqgen info``: what this machine is and how well the tune cache covers it."""

from __future__ import annotations

import platform

import torch
import triton

from tqgen.spec import default_matrix
from tqgen.tuning.arch import current_arch, interpreting
from tqgen.tuning.cache import load_tune_cache
from tqgen.version import __version__


def info_rows(arch: str | None = None) -> list[tuple[str, str]]:
    """Key/value rows: versions, device, and tune-cache coverage for ``arch``."""
    rows = [
        ("tqgen", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton.__version__),
        ("TRITON_INTERPRET", "on" if interpreting() else "off"),
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows += [("gpu", props.name), ("sm count", str(props.multi_processor_count))]
    else:
        rows.append(("gpu", "none (kernels run only under TRITON_INTERPRET=1)"))
    arch = arch or current_arch()
    rows.append(("arch", arch))
    entries = load_tune_cache(arch)["entries"]
    tuned_ids = {key.split("|")[0] for key in entries}
    matrix = {s.id for s in default_matrix()}
    rows.append(("tune cache", f"{len(entries)} entries, {len(tuned_ids & matrix)}/{len(matrix)} matrix variants tuned"))
    gpus = sorted({gpu for per_gpu in entries.values() for gpu in per_gpu})
    if gpus:
        rows.append(("tuned on", ", ".join(gpus)))
    return rows
