"""benchmarks/device_check.sh on the CPU, as a dry run of its mechanics (slow): the time budget bounds every
step, steps that do not fit are skipped and say so, and everything lands in OUT_DIR with a summary."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_keeps_to_its_budget_and_reports_every_step(tmp_path):
    out = tmp_path / "device"
    total = 40
    env = {**os.environ, "SKIP_INSTALL": "1", "TOTAL_S": str(total), "OUT_DIR": str(out), "PYTHON": sys.executable}
    env.pop("OFFICIAL_PATH", None)
    start = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "benchmarks/device_check.sh")], env=env, capture_output=True,
                          text=True, timeout=total + 120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert elapsed < total + 60  # a step's timeout is min(its cap, the time left); the rest are skipped
    summary = proc.stdout[proc.stdout.index("== summary"):]
    assert "install          skipped: SKIP_INSTALL set" in summary
    assert "official         skipped: OFFICIAL_PATH not set" in summary
    for name in ("speed", "solvers_T25", "solvers_T100", "train_step", "deqir_memory"):
        line = next(line for line in summary.splitlines() if line.strip().startswith(name + " "))
        assert any(word in line for word in ("ok", "TIMED OUT", "skipped (")), line
        assert "FAILED" not in line, line
    assert "TIMED OUT after" in summary or "skipped (" in summary  # 40 s cannot hold the full-size runs
    assert (out / "devices.log").read_text().startswith("jax ")
    assert (out / "speed.log").exists()
    for saved in out.glob("*.json"):  # whatever a cut step left is whole JSON
        json.loads(saved.read_text())
    assert {p.parent for p in out.rglob("*")} <= {out}  # flat: every file directly in OUT_DIR, no subfolders
