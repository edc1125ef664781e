"""Rendering: a ``VariantSpec`` in, Triton source text out (no file I/O here)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import jinja2

from tqgen.codegen import context as context_module
from tqgen.codegen.context import template_context
from tqgen.paths import TEMPLATES_DIR
from tqgen.spec import Family, VariantSpec
from tqgen.version import __version__

TEMPLATE_FOR_FAMILY: dict[Family, str] = {
    Family.ATTN_PREFILL: "attention.py.j2",
    Family.ATTN_DECODE: "attention.py.j2",
    Family.DECODE_REDUCE: "decode_reduce.py.j2",
    Family.COMPRESS: "compress.py.j2",
    Family.DECOMPRESS: "decompress.py.j2",
    Family.SCORES: "scores.py.j2",
}


@functools.lru_cache(maxsize=None)
def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    """Jinja2 over ``templates/``: undefined names are errors, whitespace is tidy."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(spec: VariantSpec, templates_dir: Path = TEMPLATES_DIR) -> str:
    """Render one variant's kernel module (deterministic: same input, same bytes)."""
    spec.validate()
    template = environment(templates_dir).get_template(TEMPLATE_FOR_FAMILY[spec.family])
    source = template.render(**template_context(spec))
    # Normalise trailing whitespace so re-renders are byte-identical and tidy.
    lines = [line.rstrip() for line in source.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def template_hash(templates_dir: Path = TEMPLATES_DIR) -> str:
    """Hash of everything that determines rendered output: templates, context code, version."""
    h = hashlib.sha256(__version__.encode())
    for path in sorted(templates_dir.rglob("*.j2")):
        h.update(path.relative_to(templates_dir).as_posix().encode())
        h.update(path.read_bytes())
    h.update(Path(context_module.__file__).read_bytes())
    return h.hexdigest()[:16]
