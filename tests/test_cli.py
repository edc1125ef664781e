"""The command line as a user runs it."""

import subprocess
import sys

from tqgen.paths import REPO_ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tqgen", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_list_filters_and_counts():
    result = run("list", "--only", "compress_d128*")
    assert result.returncode == 0, result.stderr
    assert "compress_d128_b4_rot" in result.stdout and "3 variant(s)" in result.stdout


def test_info_reports_versions_and_coverage():
    result = run("info", "--arch", "sm_90")
    assert result.returncode == 0, result.stderr
    for key in ("torch", "triton", "tune cache", "arch"):
        assert key in result.stdout


def test_build_check_passes_on_the_committed_tree():
    result = run("build", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_bad_arch_is_a_clear_error():
    result = run("build", "--arch", "sm_1", "--check")
    assert result.returncode != 0
    assert "arch must be one of" in result.stderr
