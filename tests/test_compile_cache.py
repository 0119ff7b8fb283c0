"""``ircore.compile_cache``: a second process reuses the first one's compiled programs."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from ircore import compile_cache

_SCRIPT = """
import sys, jax, jax.numpy as jnp
from ircore import compile_cache
folder = compile_cache.enable(sys.argv[1], min_compile_seconds=0.0)
print("folder", folder)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
print("value", float(f(jnp.ones((64, 64))).sum()))
"""


def _run(tmp_path: pathlib.Path, setting: str, **env: str) -> str:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    full_env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1]), **env}
    done = subprocess.run([sys.executable, str(script), setting], capture_output=True, text=True, env=full_env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _entries(folder: pathlib.Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_second_process_reads_what_the_first_wrote(tmp_path):
    folder = tmp_path / "cache"
    first = _run(tmp_path, str(folder))
    written = _entries(folder)
    assert written, "the first run stored no compiled program"
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    second = _run(tmp_path, str(folder))
    assert second.splitlines()[-1] == first.splitlines()[-1]  # same value
    assert _entries(folder) == written  # nothing new to compile, nothing rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_auto_uses_the_user_folder_and_off_disables(tmp_path):
    out = _run(tmp_path, "auto", **{compile_cache.ENV_VAR: str(tmp_path / "user")})
    assert f"folder {tmp_path / 'user'}" in out and _entries(tmp_path / "user")
    assert "folder None" in _run(tmp_path, "off")
    assert compile_cache.enable("OFF") is None and compile_cache.enable("") is None


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_folder() == tmp_path / "ir-diffusion-jax" / "jax"


def test_unwritable_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError) as err:
        compile_cache.enable(str(blocker / "cache"))
    assert "not writable" in str(err.value) and "off" in str(err.value) and "\n" not in str(err.value)
