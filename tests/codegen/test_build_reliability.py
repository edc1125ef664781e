"""Builds and the on-demand render cache under concurrency and damage."""

import os
import threading
from pathlib import Path

import pytest

from tqgen.files import write_if_changed
from tqgen.codegen.build import build
from tqgen.codegen.loader import CacheDirError, kernel_module, source_path
from tqgen.codegen.render import render
from tqgen.spec import Family, VariantSpec

OFF_MATRIX = VariantSpec(Family.DECOMPRESS, 48, 2)  # head_dim 48 is outside the committed matrix


def test_stale_file_removed_by_another_build_is_not_an_error(tmp_path, monkeypatch):
    """Two builds cleaning the same stale file: the second one's unlink finds it gone."""
    (tmp_path / "attn_stale_variant.py").write_text("# stale\n")
    original = Path.unlink

    def raced_unlink(self, missing_ok=False):
        original(self)  # "the other build" removes it first ...
        return original(self, missing_ok=missing_ok)  # ... then this one tries

    monkeypatch.setattr(Path, "unlink", raced_unlink)
    report = build("sm_90", only=None, out_dir=tmp_path)
    assert "attn_stale_variant.py" in report.removed
    assert not (tmp_path / "attn_stale_variant.py").exists()


def test_file_vanishing_before_it_is_read_is_rewritten(tmp_path, monkeypatch):
    target = tmp_path / "x.py"
    target.write_text("old\n")
    original = Path.read_bytes

    def vanishing(self):
        if self == target:
            os.unlink(self)  # removed between the existence check and the read
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", vanishing)
    assert write_if_changed(target, "new\n")
    assert target.read_text() == "new\n"


def test_concurrent_builds_of_a_stale_tree(tmp_path):
    """Two real builds at once over a tree with stale files both succeed (and agree)."""
    for name in ("attn_old_a.py", "attn_old_b.py", "compress_old.py"):
        (tmp_path / name).write_text("# stale\n")
    errors = []

    def run():
        try:
            build("sm_90", out_dir=tmp_path)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert build("sm_90", check=True, out_dir=tmp_path).ok


def test_only_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="matches no variant"):
        build("sm_90", only="no_such_variant", out_dir=tmp_path)


def test_truncated_cached_kernel_is_rendered_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TQGEN_CACHE_DIR", str(tmp_path))
    path = source_path(OFF_MATRIX)
    good = path.read_text()
    assert good == render(OFF_MATRIX)
    path.write_text(good[: len(good) // 2])  # a crash mid-write, a full disk, an edit
    assert source_path(OFF_MATRIX) == path
    assert path.read_text() == good
    kernel_module.cache_clear()
    assert hasattr(kernel_module(OFF_MATRIX), "decompress_kernel")


def test_cache_dir_that_is_a_file_is_one_clear_error(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("TQGEN_CACHE_DIR", str(not_a_dir))
    with pytest.raises(CacheDirError, match=r"cannot use its kernel cache .*file.*set TQGEN_CACHE_DIR") as info:
        source_path(OFF_MATRIX)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
