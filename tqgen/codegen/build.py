"""``python -m tqgen build``: render the default matrix into ``generated/``.

Files are rewritten only when their content changes; ``manifest.json`` records
what was rendered (ids, source hashes, template hash, tqgen version, arch and the
launch config chosen for each variant).  ``--check`` writes nothing and fails when
``generated/`` differs from what the templates produce now.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqgen.codegen.render import render, template_hash
from tqgen.files import read_bytes, write_if_changed
from tqgen.paths import MANIFEST_PATH, TEMPLATES_DIR, build_dir
from tqgen.spec import VariantSpec, default_matrix, select
from tqgen.tuning import configs_for
from tqgen.tuning.arch import ARCH_LIMITS, check_arch
from tqgen.version import __version__

MANIFEST_NAME = MANIFEST_PATH.name


@dataclass
class BuildReport:
    """What a build (or check) found, file by file."""

    arch: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # differs / missing / extra (check mode)
    removed: list[str] = field(default_factory=list)
    per_family: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.stale


GPU_ARCHES = tuple(sorted(a for a, limits in ARCH_LIMITS.items() if not limits.interpreter))


def manifest_text(specs: list[VariantSpec], sources: dict[str, str], templates_dir: Path = TEMPLATES_DIR) -> str:
    """The manifest for ``specs`` (deterministic: no timestamps).  It records each variant's launch
    configs for every GPU arch, so building for one arch or another writes the same bytes."""
    variants = {}
    for spec in specs:
        variants[spec.id] = {
            "file": f"{spec.id}.py",
            "family": spec.family.value,
            "sha256": hashlib.sha256(sources[spec.id].encode()).hexdigest()[:16],
            "configs": {arch: configs_for(spec, arch) for arch in GPU_ARCHES},
        }
    manifest = {
        "tqgen_version": __version__,
        "template_hash": template_hash(templates_dir),
        "arches": list(GPU_ARCHES),
        "variants": variants,
    }
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def build(
    arch: str | None,
    only: str | None = None,
    check: bool = False,
    out_dir: Path | None = None,
    templates_dir: Path = TEMPLATES_DIR,
) -> BuildReport:
    """Render (or with ``check``, compare) the default matrix; ``only`` filters by id pattern.

    Concurrent builds of one tree are safe: every write is an atomic rename of identical bytes,
    and a stale file another build removed first is simply gone.  A pattern that matches no
    variant is an error (ValueError), not an empty build.
    """
    out_dir = build_dir() if out_dir is None else out_dir
    arch = arch or "sm_90"  # the kernels are the same for every arch; it picks what the report shows
    check_arch(arch)
    report = BuildReport(arch=arch)
    all_specs = list(default_matrix())
    chosen = {s.id for s in select(all_specs, only)}
    if not chosen:
        raise ValueError(f"--only {only!r} matches no variant of the matrix (see `python -m tqgen list`)")
    sources = {s.id: render(s, templates_dir) for s in all_specs if only is None or s.id in chosen}

    family_of = {f"{s.id}.py": s.family.value for s in all_specs}
    expected = {f"{sid}.py": text for sid, text in sources.items() if sid in chosen}
    if only is None:
        expected[MANIFEST_NAME] = manifest_text(all_specs, sources, templates_dir)
        family_of[MANIFEST_NAME] = "manifest"
    for name, text in sorted(expected.items()):
        path = out_dir / name
        report.per_family[family_of[name]] += 1
        if check:
            if read_bytes(path) != text.encode():
                report.stale.append(name)
            else:
                report.unchanged.append(name)
        elif write_if_changed(path, text):
            report.written.append(name)
        else:
            report.unchanged.append(name)

    if only is None and out_dir.exists():
        for path in sorted(out_dir.glob("*.py")):
            if path.name not in expected:
                if check:
                    report.stale.append(path.name)
                else:
                    path.unlink(missing_ok=True)  # another build may have removed it already
                    report.removed.append(path.name)
    return report
