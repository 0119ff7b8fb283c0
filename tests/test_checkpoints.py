"""ircore.checkpoints: round trip, metadata, overwrite refusal, interrupted writes never restorable."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ircore import checkpoints


def _params():
    rng = np.random.default_rng(0)
    return {
        "conv_in": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 3, 8)), jnp.float32), "bias": jnp.zeros(8)},
        "block_0": {"norm": {"scale": jnp.ones(8, jnp.bfloat16)}, "count": np.arange(5, dtype=np.int32)},
    }


def _assert_same(tree_a, tree_b):
    assert jax.tree_util.tree_structure(tree_a) == jax.tree_util.tree_structure(tree_b)
    for x, y in zip(jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_metadata(tmp_path):
    params = _params()
    config = ml_collections.ConfigDict({"model": {"ch": 8, "ch_mult": (1, 2)}, "name": "tiny"})
    path = checkpoints.save_params(tmp_path / "ckpt", params, config)
    assert path == (tmp_path / "ckpt").absolute()
    _assert_same(checkpoints.restore_params(path), params)
    assert checkpoints.restore_metadata(path) == {"model": {"ch": 8, "ch_mult": [1, 2]}, "name": "tiny"}
    # restoring into an explicit target (e.g. from jax.eval_shape) gives the target's structure
    target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), params)
    _assert_same(checkpoints.restore_params(path, target), params)


def test_no_metadata_gives_empty_dict(tmp_path):
    path = checkpoints.save_params(tmp_path / "c", {"w": np.ones(3, np.float32)})
    assert checkpoints.restore_metadata(path) == {}


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "ckpt"
    checkpoints.save_params(path, _params(), {"version": 1})
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        checkpoints.save_params(path, {"w": np.zeros(2)}, {"version": 2})
    _assert_same(checkpoints.restore_params(path), _params())
    new = {"w": np.full(4, 7.0, np.float32)}
    checkpoints.save_params(path, new, {"version": 2}, overwrite=True)
    _assert_same(checkpoints.restore_params(path), new)
    assert checkpoints.restore_metadata(path) == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging leftovers


def test_missing_and_foreign_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        checkpoints.restore_params(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a parameter checkpoint"):
        checkpoints.restore_params(tmp_path / "plain")
    with pytest.raises(ValueError, match="JSON"):
        checkpoints.save_params(tmp_path / "x", {"w": np.ones(1)}, {"bad": object()})
    assert not (tmp_path / "x").exists()


def _fail_final_rename(monkeypatch, name: str):
    """Makes orbax fail exactly when it would rename the finished temporary directory to ``name``."""
    cls = ocp.path.atomicity.AtomicRenameTemporaryPath
    original = cls.finalize

    async def finalize(self, *args, **kwargs):
        if self._final_path.name == name:
            raise RuntimeError("simulated crash before the final rename")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "finalize", finalize)


def test_interrupted_write_is_never_restorable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _fail_final_rename(monkeypatch, "ckpt")
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpoints.save_params(path, _params(), {"a": 1})
    monkeypatch.undo()
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.restore_params(path)
    leftovers = [p for p in tmp_path.iterdir()]
    assert leftovers, "orbax should have left its temporary directory"
    for leftover in leftovers:  # everything was written, but the directory was never finalized
        assert (leftover / "params").is_dir()
        with pytest.raises(ValueError, match="incomplete checkpoint"):
            checkpoints.restore_params(leftover)
    # a later save to the same path succeeds
    checkpoints.save_params(path, _params(), {"a": 2})
    _assert_same(checkpoints.restore_params(path), _params())


def test_interrupted_overwrite_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    checkpoints.save_params(path, _params(), {"version": 1})

    cls = ocp.path.atomicity.AtomicRenameTemporaryPath
    original = cls.finalize

    async def finalize(self, *args, **kwargs):
        if self._final_path.name.startswith("ckpt.new-"):
            raise RuntimeError("simulated crash")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "finalize", finalize)
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpoints.save_params(path, {"w": np.zeros(3)}, {"version": 2}, overwrite=True)
    monkeypatch.undo()
    _assert_same(checkpoints.restore_params(path), _params())
    assert checkpoints.restore_metadata(path) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
