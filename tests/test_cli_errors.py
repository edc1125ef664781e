"""The command line's errors: one line on stderr and exit status 2."""

import subprocess
import sys

import pytest

from tqgen.paths import REPO_ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tqgen", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (("build", "--only", "no_such_variant", "--check"), "matches no variant"),
        (("build", "--only", "no_such_variant"), "matches no variant"),
        (("list", "--only", "no_such_variant"), "matches no variant"),
        (("info", "--arch", "sm_999"), "arch must be one of"),
    ],
)
def test_errors_exit_2_with_one_line(args, message):
    result = run(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
