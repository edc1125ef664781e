"""A wheel built from the checkout installs and works on its own: ``build`` renders into the user
cache (never into the installation) and an attention call runs from the installed package."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

from tqgen.paths import REPO_ROOT

SNIPPET = """
import torch, tqgen
from tqgen import TurboQuant, attention
assert tqgen.__file__.startswith({prefix!r}), tqgen.__file__
q, k, v = torch.randn(1, 4, 1, 64), torch.randn(1, 2, 70, 64), torch.randn(1, 2, 70, 64)
tq = TurboQuant(64, 4)
out = attention(q, tq.compress(k), tq.compress(v))
assert out.shape == q.shape and torch.isfinite(out).all()
print("attention ok")
"""


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_builds_and_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(REPO_ROOT)], env, tmp_path)
    wheel = glob.glob(str(tmp_path / "dist" / "tqgen-*.whl"))
    assert len(wheel) == 1, wheel
    prefix = tmp_path / "prefix"
    # --ignore-installed: never touch (uninstall) the tqgen of the environment running the tests
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--prefix", str(prefix), wheel[0]],
         env, tmp_path)
    site = glob.glob(str(prefix / "lib" / "python*" / "site-packages"))
    assert len(site) == 1, site
    env.update(PYTHONPATH=site[0], TQGEN_CACHE_DIR=str(tmp_path / "user_cache"), TRITON_INTERPRET="1")
    out = _run([sys.executable, "-m", "tqgen", "build", "--arch", "sm_89"], env, tmp_path)
    assert "written" in out
    rendered = tmp_path / "user_cache" / "generated"
    assert (rendered / "manifest.json").exists() and len(list(rendered.glob("*.py"))) > 100
    assert not list(Path(site[0]).glob("tqgen/**/manifest.json"))  # nothing written into the installation
    assert "attention ok" in _run([sys.executable, "-c", SNIPPET.format(prefix=str(prefix))], env, tmp_path)
