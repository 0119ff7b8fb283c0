"""Every preset under configs/ is data: it loads without importing any engine code (jax, flax, optax, orbax)."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from ircore.config_utils import ArgumentRefused, ConfigError, load_config_file, preset_dirs, preset_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENGINE = ("jax", "flax", "optax", "orbax", "tensorflow", "torch", "grain")

_SCRIPT = """
import json, pathlib, sys
from ircore.config_utils import load_config_file
loaded = {}
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.py")):
    cfg = load_config_file(path)  # every preset has a default (no-argument) form
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
    assert len(result["loaded"]) == len(list((ROOT / "configs").rglob("*.py"))), result["loaded"]  # the presets really were loaded
    assert result["engine"] == [], f"loading configs imported {result['engine']}"


PRESETS = sorted((ROOT / "configs").rglob("*.py"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_a_misspelt_argument_is_one_line_listing_values_that_really_load(path):
    """``--config sr_x4:embeded``: every preset refuses an unknown argument with one line; a preset that takes
    arguments lists the accepted ones (each of which loads), one that takes none says so."""
    with pytest.raises(ConfigError) as err:
        load_config_file(path, "embeded")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"config {path.stem} ")
    if not isinstance(err.value, ArgumentRefused):
        assert message == f"config {path.stem} takes no argument: drop ':embeded'"
        return
    assert message.startswith(f"config {path.stem} rejects ':embeded': ")
    accepted = set(re.findall(r"'(\w+)'", err.value.reason)) - {"embeded"}
    assert len(accepted) >= 2, message
    for value in accepted:
        assert len(load_config_file(path, value)) > 0


@pytest.mark.parametrize("package", ["deqir_jax", "resshift_jax"])
def test_preset_names_are_unique_within_a_package(package):
    """A name must not hide a file of the same name in a subfolder (the first match would win silently)."""
    stems = [p.stem for d in preset_dirs(package) for p in d.glob("*.py")]
    assert sorted(stems) == sorted(set(stems)) == sorted(preset_names(preset_dirs(package)))
