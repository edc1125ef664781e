"""Where tqgen's on-disk artefacts live.

From a checkout (``pip install -e .``) templates, the committed generated kernels and the tune
cache sit beside the package, and ``build`` renders into the checkout.  An installed wheel
carries the same three directories as data files under ``<prefix>/share/tqgen`` (read only);
there ``build`` renders into the user cache directory instead, never into the installation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (absent for a wheel)


def _data_root() -> Path:
    """The checkout when it holds the templates, else the wheel's ``share/tqgen`` data directory."""
    if (REPO_ROOT / "templates").is_dir():
        return REPO_ROOT
    # <prefix>/lib/pythonX.Y/site-packages/tqgen/paths.py -> <prefix>/share/tqgen
    for prefix in (Path(__file__).resolve().parents[4], Path(sys.prefix)):
        if (prefix / "share" / "tqgen" / "templates").is_dir():
            return prefix / "share" / "tqgen"
    return REPO_ROOT  # neither: errors name the missing directory under the checkout


DATA_ROOT = _data_root()
INSTALLED = DATA_ROOT != REPO_ROOT
TEMPLATES_DIR = DATA_ROOT / "templates"
GENERATED_DIR = DATA_ROOT / "generated"  # the committed matrix, as shipped
TUNE_CACHE_DIR = DATA_ROOT / "tune_cache"
MANIFEST_PATH = GENERATED_DIR / "manifest.json"


def user_cache_dir() -> Path:
    """Per-user directory for kernels rendered on demand (outside the committed matrix)."""
    root = os.environ.get("TQGEN_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tqgen"


def build_dir() -> Path:
    """Where ``python -m tqgen build`` renders: the checkout's ``generated/``, or for an installed
    wheel ``<user cache>/generated``."""
    return user_cache_dir() / "generated" if INSTALLED else GENERATED_DIR
