"""Where tqgen's on-disk artefacts live.

tqgen is a cookbook used from a checkout (``pip install -e .``): templates, the
committed generated kernels and the tune cache sit beside the package.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "templates"
GENERATED_DIR = REPO_ROOT / "generated"
TUNE_CACHE_DIR = REPO_ROOT / "tune_cache"
MANIFEST_PATH = GENERATED_DIR / "manifest.json"


def user_cache_dir() -> Path:
    """Per-user directory for kernels rendered on demand (outside the committed matrix)."""
    root = os.environ.get("TQGEN_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tqgen"
