"""Runtime loading of generated kernels.

A variant in the committed matrix is imported from ``generated/`` when the
committed manifest was rendered from the current templates.  Anything else is
rendered on demand into ``<user cache>/<template hash>/<id>.py`` (atomic rename,
so concurrent processes are safe: they write identical bytes) and imported from
there.  A cached file is used only if it holds exactly what the templates render
now; anything else (truncated, edited, left half-written by a crash) is rendered
again.  ``@triton.jit`` needs real files, hence no in-memory modules.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from tqgen.files import write_if_changed
from tqgen.codegen.render import render, template_hash
from tqgen.paths import GENERATED_DIR, MANIFEST_PATH, user_cache_dir
from tqgen.spec import VariantSpec


@functools.lru_cache(maxsize=1)
def _current_hash() -> str:
    return template_hash()


@functools.lru_cache(maxsize=1)
def _committed_ids() -> frozenset[str]:
    """Ids whose committed file is current (manifest rendered from today's templates)."""
    if not MANIFEST_PATH.exists():
        return frozenset()
    manifest = json.loads(MANIFEST_PATH.read_text())
    if manifest.get("template_hash") != _current_hash():
        return frozenset()
    return frozenset(manifest.get("variants", {}))


def source_path(spec: VariantSpec) -> Path:
    """Where the kernel file for ``spec`` is (rendering it on demand if needed)."""
    spec.validate()
    if spec.id in _committed_ids():
        path = GENERATED_DIR / f"{spec.id}.py"
        if path.exists():
            return path
    root = user_cache_dir()
    path = root / _current_hash() / f"{spec.id}.py"
    try:
        write_if_changed(path, render(spec))  # rewrites only a file that is missing or not what renders now
    except OSError as err:
        raise CacheDirError(
            f"tqgen cannot use its kernel cache {root} ({type(err).__name__}: {err.strerror or err}); "
            "set TQGEN_CACHE_DIR to a writable directory"
        ) from None
    return path


class CacheDirError(RuntimeError):
    """The on-demand kernel cache directory cannot be created or written."""


@functools.lru_cache(maxsize=None)
def kernel_module(spec: VariantSpec) -> ModuleType:
    """Import the generated module for ``spec`` (once per process)."""
    path = source_path(spec)
    name = f"tqgen_generated.{spec.id}_{_current_hash()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def kernel(spec: VariantSpec):
    """The ``@triton.jit`` function of ``spec`` (named ``<family>_kernel`` in every template)."""
    return getattr(kernel_module(spec), f"{spec.family.value}_kernel")
