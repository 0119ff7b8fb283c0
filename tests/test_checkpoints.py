"""ircore.checkpoints: parameter checkpoints (round trip, metadata, overwrite refusal, interrupted writes never
restorable) and training checkpoints (interval, keep, sharded restore, meta record, EMA export)."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ircore import checkpoints
from ircore import mesh as mesh_lib


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


def _fail_final_rename(monkeypatch, prefix: str):
    """Makes orbax fail exactly when it would rename a finished temporary directory to a name starting with
    ``prefix`` (save_params stages every checkpoint as ``<name>.new-<token>`` before renaming it into place)."""
    cls = ocp.path.atomicity.AtomicRenameTemporaryPath
    original = cls.finalize

    async def finalize(self, *args, **kwargs):
        if self._final_path.name.startswith(prefix):
            raise RuntimeError("simulated crash before the final rename")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "finalize", finalize)


def test_interrupted_write_is_never_restorable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _fail_final_rename(monkeypatch, "ckpt.new-")
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpoints.save_params(path, _params(), {"a": 1})
    assert list(tmp_path.iterdir()) == []  # a failed save cleans up its staging folders
    # a kill gets no chance to clean up: the leftovers are never restorable and never at ``path``
    monkeypatch.setattr(checkpoints.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpoints.save_params(path, _params(), {"a": 1})
    monkeypatch.undo()
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.restore_params(path)
    leftovers = [p for p in tmp_path.iterdir()]
    assert leftovers, "orbax should have left its temporary directory"
    for leftover in leftovers:  # everything was written, but the directory was never finalized
        assert leftover.name.startswith("ckpt.new-") and (leftover / "params").is_dir()
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


# ----------------------------------------------------------------------------------------------- ownership
def _tree(root) -> dict:
    """Every file under ``root`` with its bytes: what a refused save must leave unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_names_what_was_written(tmp_path):
    path = checkpoints.save_params(tmp_path / "ckpt", _params(), {"v": 1})
    manifest = json.loads((path / checkpoints.MANIFEST).read_text())
    assert manifest["writer"] == checkpoints.WRITER
    assert set(manifest["entries"]) == {p.name for p in path.iterdir()} - {checkpoints.MANIFEST}
    assert {"params", "metadata"} <= set(manifest["entries"])
    assert checkpoints.foreign_entries(path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_with_foreign_files_is_never_replaced(tmp_path, overwrite):
    path = checkpoints.save_params(tmp_path / "ckpt", _params(), {"v": 1})
    (path / "notes.txt").write_text("mine")
    (path / "params" / "extra.bin").write_bytes(b"x")  # inside an item of ours: replaced with the item
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match=r"holds files this program did not write \(notes.txt\); "
                                              r"choose another --out or remove them yourself"):
        checkpoints.save_params(path, {"w": np.zeros(2)}, {"v": 2}, overwrite=overwrite)
    assert _tree(tmp_path) == before


def test_foreign_folders_are_refused_and_empty_ones_used(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "7").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="config.json, checkpoints|checkpoints, config.json"):
        checkpoints.export_ema(_State(jnp.asarray(1), {"w": jnp.ones(2)}), run, overwrite=True)
    with pytest.raises(FileExistsError, match="choose another --export"):
        checkpoints.export_ema(_State(jnp.asarray(1), {"w": jnp.ones(2)}), run, overwrite=True)
    with pytest.raises(ValueError, match="--export .*run would replace .*run, which it contains"):
        checkpoints.export_ema(_State(jnp.asarray(1), {"w": jnp.ones(2)}), run, overwrite=True, protect=(run,))
    assert _tree(tmp_path) == before and (run / "checkpoints" / "7").is_dir()
    # a forged or broken manifest does not make a folder ours
    (tmp_path / "forged").mkdir()
    (tmp_path / "forged" / checkpoints.MANIFEST).write_text('{"writer": "someone else", "entries": []}')
    with pytest.raises(FileExistsError, match=checkpoints.MANIFEST):
        checkpoints.save_params(tmp_path / "forged", {"w": np.ones(1)}, overwrite=True)
    (tmp_path / "empty").mkdir()
    # an empty existing folder is used, no --overwrite needed
    checkpoints.save_params(tmp_path / "empty", {"w": np.ones(1, np.float32)})
    _assert_same(checkpoints.restore_params(tmp_path / "empty"), {"w": np.ones(1, np.float32)})


def test_checkpoints_without_manifest_stay_loadable_and_replaceable(tmp_path):
    """A checkpoint written before manifests existed: a plain orbax folder of our items counts as ours."""
    path = checkpoints.save_params(tmp_path / "old", _params(), {"v": 1})
    (path / checkpoints.MANIFEST).unlink()
    _assert_same(checkpoints.restore_params(path), _params())
    assert checkpoints.restore_metadata(path) == {"v": 1}
    assert checkpoints.foreign_entries(path) == []
    with pytest.raises(FileExistsError, match=r"already exists; pass --overwrite \(overwrite=True from Python\)"):
        checkpoints.save_params(path, {"w": np.zeros(2)})
    checkpoints.save_params(path, {"w": np.zeros(2, np.float32)}, {"v": 2}, overwrite=True)
    assert checkpoints.restore_metadata(path) == {"v": 2} and (path / checkpoints.MANIFEST).is_file()
    (path / checkpoints.MANIFEST).unlink()
    (path / "README").write_text("not orbax")
    assert checkpoints.foreign_entries(path) == ["README"]


def test_check_target_refusals(tmp_path, monkeypatch):
    src = tmp_path / "weights" / "model.pth"
    src.parent.mkdir()
    src.write_bytes(b"w")
    with pytest.raises(ValueError, match="would replace .*model.pth, which it contains; choose another --out"):
        checkpoints.check_target(tmp_path / "weights", overwrite=True, protect=(src,))
    with pytest.raises(ValueError, match="which it contains"):
        checkpoints.check_target(src, protect=(src,))
    assert checkpoints.check_target(tmp_path / "weights" / "converted", protect=(src,)).name == "converted"
    with pytest.raises(ValueError, match="--out is empty; name the output folder"):
        checkpoints.check_target("")
    with pytest.raises(FileExistsError, match="is an existing file, not a folder; choose another --out"):
        checkpoints.check_target(src, overwrite=True)
    (tmp_path / "link").symlink_to(tmp_path / "weights")
    with pytest.raises(FileExistsError, match="link is a symbolic link .*; pass the folder itself or another --out"):
        checkpoints.check_target(tmp_path / "link", overwrite=True)
    (tmp_path / "link").unlink()
    with pytest.raises(FileExistsError, match="model.pth is a file; choose another --out"):
        checkpoints.check_target(src / "sub" / "out")
    with pytest.raises(FileExistsError, match="holds files this program did not write"):
        checkpoints.save_params(tmp_path / "weights", {"w": np.ones(1)}, overwrite=True)
    real_access = checkpoints.os.access
    monkeypatch.setattr(checkpoints.os, "access", lambda p, mode: False if str(p) == str(tmp_path) else
                        real_access(p, mode))
    with pytest.raises(PermissionError, match="read-only or not writable; choose another --out"):
        checkpoints.save_params(tmp_path / "new" / "ckpt", {"w": np.ones(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


# ----------------------------------------------------------------------------------------------- training
class _State:
    """The two fields of a train state that :func:`checkpoints.export_ema` reads."""

    def __init__(self, step, ema_params):
        self.step, self.ema_params = step, ema_params


def _train_state(step: int, mesh) -> dict:
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", None))
    kernel = jax.device_put(np.arange(64 * 8, dtype=np.float32).reshape(64, 8) * step, sharding)
    return {"step": jnp.asarray(step, jnp.int32), "params": {"kernel": kernel, "bias": jnp.full(8, step, jnp.bfloat16)}}


def test_restore_ema_params_reads_one_subtree_without_the_state(tmp_path):
    mesh = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (2, 4))
    ckpt = checkpoints.TrainCheckpoints(tmp_path / "c", every=1, keep=3, async_save=False)
    for step in (1, 2):
        state = _train_state(step, mesh)
        ckpt.save(step, {**state, "ema_params": {"w": state["params"]["kernel"] + 0.5}}, {"step": step}, force=True)
    ckpt.wait()
    ema = ckpt.restore_ema_params(1)  # an older step, read without building the train state
    assert set(ema) == {"w"}
    np.testing.assert_array_equal(np.asarray(ema["w"]), np.arange(64 * 8, dtype=np.float32).reshape(64, 8) + 0.5)
    ckpt.close()


def test_train_checkpoints_interval_keep_and_sharded_restore(tmp_path):
    mesh = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (2, 4))
    ckpt = checkpoints.TrainCheckpoints(tmp_path / checkpoints.CHECKPOINT_DIR, every=2, keep=2)
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    # orbax saves the first step offered while none exists, then only steps on the interval
    started = [ckpt.save(s, _train_state(s, mesh), {"step": s, "data_step": s}) for s in range(1, 7)]
    assert started == [True, True, False, True, False, True]
    assert not ckpt.save(7, _train_state(7, mesh), {"step": 7})  # off the interval
    ckpt.wait()
    assert ckpt.all_steps() == [4, 6] and ckpt.latest_step() == 6  # keep=2
    items = {p.name for p in (tmp_path / "checkpoints" / "6").iterdir()}
    assert {checkpoints.META_ITEM, checkpoints.STATE_ITEM} <= items
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                      _train_state(1, mesh))
    state, meta = ckpt.restore(4, abstract)
    assert meta == {"step": 4, "data_step": 4}
    _assert_same(state, _train_state(4, mesh))
    assert state["params"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert ckpt.save(9, _train_state(9, mesh), {"step": 9}, force=True)  # forced off the interval
    ckpt.wait()
    assert ckpt.all_steps() == [6, 9]
    ckpt.close()
    reopened = checkpoints.TrainCheckpoints(tmp_path / "checkpoints", every=2, keep=2)
    assert reopened.latest_step() == 9
    reopened.close()


def test_train_checkpoint_meta_must_be_json(tmp_path):
    ckpt = checkpoints.TrainCheckpoints(tmp_path / "c", every=1, keep=1, async_save=False)
    with pytest.raises(ValueError, match="checkpoint metadata is not JSON-serialisable"):
        ckpt.save(1, {"w": jnp.ones(2)}, {"bad": object()})
    assert ckpt.all_steps() == []
    ckpt.close()


def test_export_ema_writes_a_parameter_checkpoint(tmp_path):
    ema = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}
    state = _State(jnp.asarray(42, jnp.int32), ema)
    path = checkpoints.export_ema(state, tmp_path / "export", {"kind": "toy", "step": -1})
    _assert_same(checkpoints.restore_params(path), ema)
    assert checkpoints.restore_metadata(path) == {"kind": "toy", "step": 42}  # the state's step wins
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoints.export_ema(state, path)
    later = _State(jnp.asarray(43, jnp.int32), {"w": jnp.zeros((2, 3))})
    checkpoints.export_ema(later, path, overwrite=True)
    assert checkpoints.restore_metadata(path) == {"step": 43}
    _assert_same(checkpoints.restore_params(path), {"w": np.zeros((2, 3), np.float32)})
