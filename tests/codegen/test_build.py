"""Codegen: deterministic rendering, write-if-changed builds, --check, on-demand loading."""

import json
import multiprocessing
import shutil

import pytest

from tqgen.codegen.build import build
from tqgen.files import write_if_changed
from tqgen.codegen.loader import kernel_module, source_path
from tqgen.codegen.render import render, template_hash
from tqgen.paths import TEMPLATES_DIR
from tqgen.spec import Family, VariantSpec, default_matrix, select

# One representative per family keeps these tests fast; the full matrix is
# rendered once in test_full_build_is_idempotent.
SAMPLE = [
    VariantSpec(Family.ATTN_PREFILL, 128, 4, 4, 4, True, True),
    VariantSpec(Family.ATTN_DECODE, 80, 3, 3, 2, False, True),
    VariantSpec(Family.DECODE_REDUCE, 128, rotate=True),
    VariantSpec(Family.COMPRESS, 96, 2, rotate=True),
    VariantSpec(Family.DECOMPRESS, 64, 4),
    VariantSpec(Family.SCORES, 128, 4, group=4),
]


@pytest.mark.parametrize("spec", SAMPLE, ids=lambda s: s.id)
def test_render_is_deterministic_and_valid_python(spec):
    first, second = render(spec), render(spec)
    assert first == second
    compile(first, spec.id, "exec")
    assert f"def {spec.family.value}_kernel(" in first
    assert first.endswith("\n") and not first.endswith("\n\n")


def test_render_rejects_an_invalid_variant():
    with pytest.raises(ValueError, match="head_dim"):
        render(VariantSpec(Family.ATTN_PREFILL, 33))


def test_full_build_is_idempotent_and_checkable(tmp_path):
    report = build("sm_89", out_dir=tmp_path)
    n_variants = len(list(default_matrix()))
    assert len(report.written) == n_variants + 1  # + manifest
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    again = build("sm_89", out_dir=tmp_path)
    assert again.written == [] and len(again.unchanged) == n_variants + 1
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes  # nothing rewritten

    assert build(None, check=True, out_dir=tmp_path).ok
    assert build("sm_80", check=True, out_dir=tmp_path).ok  # another arch writes the same bytes

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "sm_89" in manifest["arches"] and "sm_90" in manifest["arches"] and "cpu" not in manifest["arches"]
    assert manifest["template_hash"] == template_hash()
    assert set(manifest["variants"]) == {s.id for s in default_matrix()}
    entry = manifest["variants"]["attn_decode_d128_k4v4_g4_causal_rot"]
    assert entry["file"] == "attn_decode_d128_k4v4_g4_causal_rot.py"
    for arch in manifest["arches"]:
        assert "default" in entry["configs"][arch] and "BLOCK_N" in entry["configs"][arch]["default"]


def _small_build(tmp_path, templates_dir=TEMPLATES_DIR):
    out = tmp_path / "generated"
    build("sm_90", only="d64", out_dir=out, templates_dir=templates_dir)
    return out


def test_check_names_files_made_stale_by_an_edited_template(tmp_path):
    out = _small_build(tmp_path)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    assert build("sm_90", only="d64", check=True, out_dir=out, templates_dir=templates).ok

    path = templates / "compress.py.j2"
    path.write_text(path.read_text() + "\n# an edit\n")
    report = build("sm_90", only="d64", check=True, out_dir=out, templates_dir=templates)
    assert not report.ok
    assert report.stale and all(name.startswith("compress_d64") for name in report.stale)


def test_check_catches_hand_edits_missing_and_extra_files(tmp_path):
    out = _small_build(tmp_path)
    victim = out / "decompress_d64_b4.py"
    victim.write_text(victim.read_text() + "# hand edit\n")
    (out / "attn_prefill_d64_fp_g1.py").unlink()
    report = build("sm_90", only="d64", check=True, out_dir=out)
    assert set(report.stale) == {"decompress_d64_b4.py", "attn_prefill_d64_fp_g1.py"}


def test_only_filters_what_is_written(tmp_path):
    report = build("sm_90", only="compress_d128*", out_dir=tmp_path)
    assert sorted(report.written) == sorted(f"{s.id}.py" for s in select(default_matrix(), "compress_d128*"))
    assert not (tmp_path / "manifest.json").exists()


def test_unknown_arch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        build("sm_12", out_dir=tmp_path)


def _load_in_subprocess(cache_dir: str) -> str:
    import os

    os.environ["TQGEN_CACHE_DIR"] = cache_dir
    os.environ["TRITON_INTERPRET"] = "1"
    from tqgen.codegen.loader import source_path as sp

    return str(sp(VariantSpec(Family.ATTN_PREFILL, 64, 4, 4, 5, True, True)))


def test_on_demand_variant_is_rendered_into_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TQGEN_CACHE_DIR", str(tmp_path))
    spec = VariantSpec(Family.ATTN_PREFILL, 64, 4, 4, 5, True, True)  # group 5: outside the matrix
    path = source_path(spec)
    assert path.parent == tmp_path / template_hash()
    assert path.read_text() == render(spec)
    module = kernel_module(spec)
    assert hasattr(module, "attn_prefill_kernel")


def test_concurrent_on_demand_rendering_is_safe(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        paths = pool.map(_load_in_subprocess, [str(tmp_path)] * 8)
    assert len(set(paths)) == 1
    spec = VariantSpec(Family.ATTN_PREFILL, 64, 4, 4, 5, True, True)
    assert open(paths[0]).read() == render(spec)
    leftovers = [p for p in (tmp_path / template_hash()).iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_committed_generated_dir_is_current():
    assert build(None, check=True).ok, "run `python -m tqgen build` and commit generated/"


def test_write_if_changed_only_writes_on_change(tmp_path):
    path = tmp_path / "x.py"
    assert write_if_changed(path, "a\n")
    assert not write_if_changed(path, "a\n")
    assert write_if_changed(path, "b\n")
