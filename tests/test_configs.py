"""Every preset under configs/ is data: it loads without importing any engine code (jax, flax, optax, orbax)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENGINE = ("jax", "flax", "optax", "orbax", "tensorflow", "torch", "grain")

_SCRIPT = """
import json, pathlib, sys
from ircore.config_utils import load_config_file
loaded = {}
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.py")):
    try:
        cfg = load_config_file(path)
    except TypeError:  # presets whose get_config needs an argument are loaded through their callers
        continue
    loaded[str(path)] = len(cfg)
engine = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"loaded": loaded, "engine": engine}))
"""


def test_presets_import_no_engine_code():
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT / "configs"), ",".join(ENGINE)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert len(result["loaded"]) >= 20, result["loaded"]  # the presets really were loaded
    assert result["engine"] == [], f"loading configs imported {result['engine']}"
