"""The README's Python example runs as written and restores the bundled photo better than its baselines."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.slow
def test_readme_python_example_runs():
    (block,) = _python_blocks()
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line for line in done.stdout.splitlines()}
    assert "'psnr'" in lines["DeqIR"] and "rounds" in lines["DeqIR"]
    assert "'lpips'" in lines["ResShift"] and "bicubic" in lines["ResShift"]


def test_readme_has_one_python_example_using_existing_names():
    (block,) = _python_blocks()
    compile(block, "README.md", "exec")  # at least valid Python
    for module, name in re.findall(r"(\w+)\.(\w+)\(", block):
        if module in ("images", "photos", "presets", "restore", "models", "pipeline", "scoring"):
            mod = {"images": "ircore.images", "photos": "ircore.photos", "presets": "deqir_jax.presets",
                   "restore": "deqir_jax.restore", "models": "deqir_jax.models", "pipeline": "resshift_jax.pipeline",
                   "scoring": "ircore.scoring"}[module]
            assert hasattr(__import__(mod, fromlist=[name]), name), f"{mod}.{name} named in README does not exist"
