"""The README's quick start runs as written, and its two commands are the ones CI uses."""

import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_runs():
    block = re.search(r"## Quick start\s+```python\n(.*?)```", README, re.S).group(1)
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the quick start must run clean
        exec(compile(block, "README quick start", "exec"), scope)
    assert tuple(scope["logits"].shape) == (1, 11, 240, 320)
    assert scope["model"]._lvtp.schedule  # the model really is patched


def test_two_commands_on_top_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [ln.split("#")[0].strip() for ln in first_block.splitlines() if ln.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
