"""Test set-up shared by every test.

* 8 virtual CPU devices (set before jax is imported), so sharded code runs on a real mesh.
* ``IRDIFF_COMPILATION_CACHE``: a temporary folder, so command lines the tests run leave the user's cache alone.
* ``fixtures_dir``: the reference-fixture folder, from ``REFERENCE_FIXTURES`` (default
  ``../shared/fixtures`` relative to the repository root).

Rule: the suite must pass with ``REFERENCE_FIXTURES`` pointing at any fixture set of this format; tests
read configurations, sizes, key names and tolerances from the sidecars and npz files (tests/README.md).
"""
from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Command lines run by the tests keep JAX's persistent compilation cache in a temporary folder, not the user's;
# the process that makes it (pytest's main process; xdist workers inherit the variable) removes it at exit.
if "IRDIFF_COMPILATION_CACHE" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="irdiff-test-jax-cache-")
    os.environ["IRDIFF_COMPILATION_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fixtures_root() -> pathlib.Path:
    raw = os.environ.get("REFERENCE_FIXTURES", "../shared/fixtures")
    path = pathlib.Path(raw)
    if not path.is_absolute():
        path = (REPO_ROOT / path).resolve()
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    path = _fixtures_root()
    if not path.is_dir():
        raise FileNotFoundError(
            f"reference fixture folder {path} does not exist; set REFERENCE_FIXTURES"
        )
    return path


class Fixture:
    """One ``NAME.npz`` with its ``NAME.json`` sidecar."""

    def __init__(self, npz_path: pathlib.Path):
        self.path = npz_path
        self.meta = json.loads(npz_path.with_suffix(".json").read_text())
        self._npz = np.load(npz_path)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._npz[key]

    def __contains__(self, key: str) -> bool:
        return key in self._npz.files

    @property
    def files(self) -> list[str]:
        return list(self._npz.files)


@pytest.fixture(scope="session")
def load_fixture(fixtures_dir):
    """``load_fixture("deqir/tiny_unet")`` -> Fixture (arrays + sidecar ``meta``)."""
    cache: dict[str, Fixture] = {}

    def load(name: str) -> Fixture:
        if name not in cache:
            path = fixtures_dir / f"{name}.npz"
            if not path.is_file():
                raise FileNotFoundError(f"fixture {path} is missing")
            cache[name] = Fixture(path)
        return cache[name]

    return load
