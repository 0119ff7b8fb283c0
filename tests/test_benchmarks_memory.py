"""benchmarks/deqir_memory.py: compiled memory of a DeqIR restoration, on the embedded prior (slow: compiles)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_memory_table_shrinks_with_the_chunk(tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/deqir_memory.py"), "--model",
         str(REPO / "configs/deqir/models/embedded_small.py"), "--steps", "12", "--chunks", "0,3",
         "--solvers", "default", "--dtypes", "float32", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["chunk_size"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {0, 3}
    for r in rows.values():
        assert r["arguments_gib"] > 0 and r["peak_gib"] >= r["arguments_gib"] + r["temporaries_gib"] - 1e-9
    # Bounding the rows per prior call bounds the activations.
    assert rows[3]["temporaries_gib"] < rows[0]["temporaries_gib"]
