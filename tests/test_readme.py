"""README's API tour runs as written (shrunk to interpreter-sized shapes on the CPU)."""

import re

from tqgen.paths import REPO_ROOT


def test_api_tour_runs(device):
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"## API tour.*?```python\n(.*?)```", text, re.S).group(1)
    small = block.replace('"cuda"', repr(device)).replace("N = 1, 32, 8, 128, 32768", "N = 1, 4, 2, 64, 40")
    small = small.replace("capacity=65536", "capacity=64")
    assert small != block or device == "cuda"
    namespace: dict = {}
    exec(compile(small, "README.md", "exec"), namespace)
    assert namespace["out"].shape == (1, 4, 1, 64)
    assert namespace["x"].shape == (1, 2, 40, 64)
