"""ircore.trainer with a toy regression model: schedule, sharded state, accumulation, EMA, logs, checkpoints,
exact resume, SIGTERM, and a SIGKILL during an asynchronous save (subprocess)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ircore import checkpoints, data, logging_utils, train_config, trainer
from ircore import mesh as mesh_lib

DIM_IN, DIM_OUT = 64, 32


def toy_init(key):
    k1, k2 = jax.random.split(key)
    return {"dense": {"kernel": 0.1 * jax.random.normal(k1, (DIM_IN, DIM_OUT)),
                      "bias": jnp.zeros((DIM_OUT,))},
            "scale": 1.0 + 0.01 * jax.random.normal(k2, (DIM_OUT,))}


def toy_loss(params, frozen, batch, key):
    target_w = frozen["target"]
    noise = 0.01 * jax.random.normal(key, batch["x"].shape[:1] + (DIM_OUT,))
    y = batch["x"] @ target_w + noise
    pred = (batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]) * params["scale"]
    mse = jnp.mean(jnp.square(pred - y))
    return mse, {"mse": mse, "pred_mean": jnp.mean(pred)}


def toy_batches(rows, seed=0):
    def batches(start):
        step = start
        while True:
            rng = np.random.default_rng([seed, step])
            x = rng.standard_normal((16, DIM_IN)).astype(np.float32)
            yield {"x": x[rows[0]:rows[1]]}
            step += 1
    return batches


def toy_config(**overrides):
    cfg = train_config.train_defaults()
    cfg.update(dict(global_batch=16, total_steps=8, lr=1e-2, lr_min=1e-3, warmup_steps=2, log_every=1,
                    checkpoint_every=2, keep_checkpoints=10, eval_every=0, fsdp_min_size=1024,
                    mesh_shape=(2, 4), ema_decay=0.9))
    cfg.update(overrides)
    return cfg


FROZEN = {"target": np.random.default_rng(1).standard_normal((DIM_IN, DIM_OUT)).astype(np.float32)}


def make_trainer(workdir, mesh=None, **overrides):
    cfg = toy_config(**overrides)
    return trainer.Trainer(cfg, workdir, init_params=toy_init, loss_fn=toy_loss, frozen=FROZEN, mesh=mesh,
                           print_fn=None)


def run_steps(tr, n):
    state = tr.init_state()
    batches = iter(toy_batches(tr.local_rows)(0))
    losses = []
    for _ in range(n):
        state, metrics = tr.train_step(state, tr.frozen, mesh_lib.to_global(next(batches), tr.mesh, 16))
        losses.append(float(metrics["loss"]))
    return state, np.asarray(losses)


def test_learning_rate_schedule():
    sched = trainer.learning_rate_schedule(lr=5e-5, lr_min=2e-5, warmup_steps=5000, total_steps=400_000)
    np.testing.assert_allclose(float(sched(0)), 5e-5 / 5000, rtol=1e-6)  # iteration 1
    np.testing.assert_allclose(float(sched(4999)), 5e-5, rtol=1e-6)  # iteration 5000: end of warm-up
    np.testing.assert_allclose(float(sched(5000 + 197_500 - 1)), 3.5e-5, rtol=1e-5)  # half-way: mean
    np.testing.assert_allclose(float(sched(399_999)), 2e-5, rtol=1e-5)
    const = trainer.learning_rate_schedule(lr=5e-5, lr_min=0, warmup_steps=10, total_steps=100, kind="constant")
    assert float(const(50)) == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="lr_schedule"):
        trainer.learning_rate_schedule(lr=1, lr_min=0, warmup_steps=1, total_steps=2, kind="linear")


def test_state_is_born_fsdp_sharded():
    tr = make_trainer("/tmp/unused")
    assert dict(tr.mesh.shape) == {"data": 2, "fsdp": 4}  # cfg.mesh_shape
    assert tr.local_rows == (0, 16)
    state = tr.init_state()
    kernel = state.params["dense"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert kernel.addressable_shards[0].data.shape == (16, 32)
    mu = optax.tree_utils.tree_get(state.opt_state, "mu")["dense"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec
    assert state.params["dense"]["bias"].sharding.is_fully_replicated
    assert tr.frozen["target"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)  # (64, 32) frozen leaf
    np.testing.assert_array_equal(np.asarray(tr.frozen["target"]), FROZEN["target"])
    with pytest.raises(ValueError, match="divisible"):
        make_trainer("/tmp/unused", global_batch=12)


def test_same_losses_on_every_mesh_and_with_accumulation():
    _, ref = run_steps(make_trainer("/tmp/unused", mesh_shape=(2, 4)), 3)
    for shape in [(8, 1), (1, 8)]:
        _, losses = run_steps(make_trainer("/tmp/unused", mesh_shape=shape), 3)
        np.testing.assert_allclose(losses, ref, rtol=1e-5)
    one = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (1, 1), devices=jax.devices()[:1])
    _, losses = run_steps(make_trainer("/tmp/unused", mesh=one), 3)
    np.testing.assert_allclose(losses, ref, rtol=1e-5)
    # accumulation over 2 micro-batches of 8: same mean gradient, but the noise keys differ per micro-batch,
    # so compare on a noise-free problem (noise scale is tiny anyway: 1e-2 * 1e-2 in the loss).
    _, acc = run_steps(make_trainer("/tmp/unused", mesh_shape=(2, 4), accum_steps=2), 3)
    np.testing.assert_allclose(acc, ref, rtol=2e-3)


def test_accumulation_equals_full_batch_gradient():
    """Without noise in the loss, accumulating 2 x 8 rows gives the 16-row update (to float rounding)."""
    with pytest.raises(ValueError, match="accum_steps"):
        make_trainer("/tmp/unused", accum_steps=4)  # 16 rows cannot feed 8 devices x 4 micro-batches
    def clean_loss(params, frozen, batch, key):
        pred = batch["x"] @ params["dense"]["kernel"]
        mse = jnp.mean(jnp.square(pred - batch["x"] @ frozen["target"]))
        return mse, {}

    states = []
    for accum in (1, 2):
        cfg = toy_config(accum_steps=accum)
        tr = trainer.Trainer(cfg, "/tmp/unused", init_params=toy_init, loss_fn=clean_loss, frozen=FROZEN,
                             print_fn=None)
        state = tr.init_state()
        batch = mesh_lib.to_global(next(iter(toy_batches(tr.local_rows)(0))), tr.mesh, 16)
        for _ in range(2):
            state, _ = tr.train_step(state, tr.frozen, batch)
        states.append(np.asarray(state.params["dense"]["kernel"]))
    np.testing.assert_allclose(states[1], states[0], atol=1e-6)
    assert np.abs(states[0] - np.asarray(toy_init(jax.random.split(jax.random.key(123456))[0])["dense"]["kernel"])).max() > 1e-3


def test_ema_and_step_counter():
    tr = make_trainer("/tmp/unused")
    s0 = tr.init_state()
    p0 = np.asarray(s0.params["dense"]["kernel"])
    s1, metrics = tr.train_step(s0, tr.frozen, mesh_lib.to_global(next(iter(toy_batches(tr.local_rows)(0))),
                                                                 tr.mesh, 16))
    p1 = np.asarray(s1.params["dense"]["kernel"])
    np.testing.assert_allclose(np.asarray(s1.ema_params["dense"]["kernel"]), 0.9 * p0 + 0.1 * p1, atol=1e-7)
    assert int(s1.step) == 1
    assert float(metrics["lr"]) == pytest.approx(1e-2 / 2)  # warm-up iteration 1 of 2
    assert {"loss", "mse", "pred_mean", "grad_norm", "lr"} <= set(metrics)


def test_ema_warmup_follows_the_update_count():
    """decay_n = min(ema_decay, (1 + n) / (10 + n)): 0.1 at the first update, then ema_decay once it is smaller."""
    tr = make_trainer("/tmp/unused", ema_warmup=True, ema_decay=0.5)
    state = tr.init_state()
    batches = iter(toy_batches(tr.local_rows)(0))
    for n in range(12):
        before = np.array(state.ema_params["dense"]["kernel"], copy=True)
        state, _ = tr.train_step(state, tr.frozen, mesh_lib.to_global(next(batches), tr.mesh, 16))
        decay = min(0.5, (1 + n) / (10 + n))
        np.testing.assert_allclose(np.asarray(state.ema_params["dense"]["kernel"]),
                                   decay * before + (1 - decay) * np.asarray(state.params["dense"]["kernel"]),
                                   atol=1e-6)


def test_fit_logs_checkpoints_and_resumes_exactly(tmp_path):
    full = make_trainer(tmp_path / "full").fit(toy_batches((0, 16)))
    assert int(full.step) == 8
    part = make_trainer(tmp_path / "split").fit(toy_batches((0, 16)), total_steps=5)
    assert int(part.step) == 5
    ckpt = make_trainer(tmp_path / "split").checkpoints()
    assert ckpt.all_steps() == [2, 4, 5]  # interval 2, plus the final step
    ckpt.close()
    resumed = make_trainer(tmp_path / "split").fit(toy_batches((0, 16)))
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    full_log = logging_utils.read_jsonl(tmp_path / "full")
    split_log = logging_utils.read_jsonl(tmp_path / "split")
    assert [r["step"] for r in split_log] == list(range(1, 9))
    np.testing.assert_array_equal([r["loss"] for r in split_log], [r["loss"] for r in full_log])
    assert {"loss", "mse", "lr", "grad_norm", "step_time", "images_per_sec"} <= set(full_log[-1])
    tb = logging_utils.read_tensorboard_scalars(tmp_path / "full" / "tensorboard")
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in tb["train/loss"]], [r["loss"] for r in full_log], rtol=1e-6)


def toy_eval(state):
    """Scalars and two images: a [-1, 1] HWC figure and a uint8 NHWC batch of one."""
    w = np.asarray(jax.device_get(state.ema_params["dense"]["kernel"]))
    figure = np.tanh(np.repeat(w[:, :, None], 3, axis=2)).astype(np.float32)  # (64, 32, 3)
    return {"w_mean": float(w.mean())}, {"figure": figure, "patch": np.full((1, 6, 10, 3), 7, np.uint8)}


def test_eval_images_reach_tensorboard_and_the_bar_shows_when_asked(tmp_path, capsys):
    tr = trainer.Trainer(toy_config(total_steps=4, eval_every=2, checkpoint_every=100, progress_bar="on"),
                         tmp_path / "on", init_params=toy_init, loss_fn=toy_loss, frozen=FROZEN, eval_fn=toy_eval,
                         print_fn=print)
    tr.fit(toy_batches((0, 16)))
    captured = capsys.readouterr()
    assert "4/4" in captured.err and "step" in captured.err  # tqdm: steps, rate, ETA on stderr
    assert "\nstep 4 | " in captured.out and "[eval] step 4 | w_mean" in captured.out  # the log lines stay
    images = logging_utils.read_tensorboard_images(tmp_path / "on" / logging_utils.TENSORBOARD_DIR)
    assert set(images) == {"eval/figure", "eval/patch"}
    assert [step for step, _ in images["eval/figure"]] == [2, 4]
    assert images["eval/figure"][0][1].shape == (DIM_IN, DIM_OUT, 3)
    assert images["eval/patch"][0][1].shape == (6, 10, 3)
    assert [s for s, _ in logging_utils.read_tensorboard_scalars(tmp_path / "on")["eval/w_mean"]] == [2, 4]

    # the default ("auto") draws nothing when stderr is no terminal (here: captured)
    make_trainer(tmp_path / "auto", total_steps=2, checkpoint_every=100).fit(toy_batches((0, 16)))
    assert "2/2" not in capsys.readouterr().err


def test_progress_bar_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="progress_bar must be one of"):
        make_trainer(tmp_path, total_steps=1, progress_bar="yes").fit(toy_batches((0, 16)))


def test_sigterm_saves_and_stops(tmp_path):
    base = toy_batches((0, 16))

    def batches(start):
        for i, batch in enumerate(base(start)):
            if start + i == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 3 is being fed
            yield batch

    tr = make_trainer(tmp_path, checkpoint_every=100)
    state = tr.fit(batches)
    assert int(state.step) == 4  # the step in flight finishes, then the loop stops and saves
    assert tr.stopped_by == "SIGTERM"
    ckpt = make_trainer(tmp_path).checkpoints()
    assert ckpt.all_steps() == [4]
    ckpt.close()
    events = logging_utils.read_jsonl(tmp_path, kind="event")
    assert events == [{"step": 4, "kind": "event", "preempted": 1}]
    assert signal.getsignal(signal.SIGTERM) is not None


def test_sigint_saves_and_stops_like_sigterm(tmp_path, capfd):
    """Ctrl-C: the same stop save as SIGTERM (no KeyboardInterrupt), ``stopped_by`` names it, the handlers are
    put back; ``on_ready`` ran once, before the first step, with the start step."""
    base, ready = toy_batches((0, 16)), []

    def batches(start):
        assert ready == [0]  # the set-up (state made) finished before any batch is read
        for i, batch in enumerate(base(start)):
            if start + i == 3:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    before = signal.getsignal(signal.SIGINT)
    tr = make_trainer(tmp_path, checkpoint_every=100)
    state = tr.fit(batches, on_ready=ready.append)
    assert (int(state.step), tr.stopped_by, ready) == (4, "SIGINT", [0])
    ckpt = make_trainer(tmp_path).checkpoints()
    assert ckpt.all_steps() == [4]
    ckpt.close()
    assert signal.getsignal(signal.SIGINT) is before
    assert "SIGINT: saving the current step" in capfd.readouterr().err


def test_unreadable_image_mid_run_saves_then_raises_and_another_model_cannot_resume(tmp_path):
    """A data error at step 3 saves step 3 and re-raises (one line); a trainer of another model then refuses
    that checkpoint with one line (before anything is compiled)."""
    base = toy_batches((0, 16))

    def batches(start):
        for i, batch in enumerate(base(start)):
            if start + i == 3:
                raise data.DataError("cannot read training image x.png (broken): replace or remove the file")
            yield batch

    with pytest.raises(data.DataError, match=r"x.png .* \(step 3 is saved in .*: rerun to resume\)"):
        make_trainer(tmp_path, checkpoint_every=100).fit(batches)
    ckpt = make_trainer(tmp_path).checkpoints()
    assert ckpt.all_steps() == [3]
    ckpt.close()
    other = trainer.Trainer(toy_config(total_steps=4), tmp_path, init_params=big_init, loss_fn=toy_loss,
                            frozen=FROZEN, print_fn=None)
    with pytest.raises(trainer.TrainSetupError, match="checkpoint step 3 in .* does not fit this model"):
        other.fit(toy_batches((0, 16)))


_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {tests!r})
    import test_trainer as T
    T.big_trainer(sys.argv[1], print_fn=print).fit(T.toy_batches((0, 16)))
""")


def big_init(key):
    """The toy model plus a 4 MB leaf, so that a checkpoint takes a while to write."""
    return {**toy_init(key), "big": jax.random.normal(key, (1024, 1024))}


def big_trainer(workdir, print_fn=None):
    return trainer.Trainer(toy_config(total_steps=9, checkpoint_every=3), workdir, init_params=big_init,
                           loss_fn=toy_loss, frozen=FROZEN, print_fn=print_fn)


def _child(workdir, tests_dir):
    code = _CHILD.format(tests=str(tests_dir))
    return subprocess.Popen([sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigkill_during_async_save_then_exact_resume(tmp_path):
    """Kill -9 right after a save of step 6 has started (the 16 MB write is still running); resume; compare."""
    tests_dir = os.path.dirname(__file__)
    ref = _child(tmp_path / "ref", tests_dir)
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out

    victim = _child(tmp_path / "run", tests_dir)
    lines = []
    for line in victim.stdout:
        lines.append(line)
        if "checkpoint: saving step 6" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "".join(lines)
    ckpt_dir = tmp_path / "run" / checkpoints.CHECKPOINT_DIR
    left = sorted(p.name for p in ckpt_dir.iterdir())
    print("after SIGKILL:", left)
    assert "3" in left

    resumed = _child(tmp_path / "run", tests_dir)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resumed from step 6" in out or "resumed from step 3" in out, out

    tr = big_trainer(tmp_path / "unused")
    a = checkpoints.TrainCheckpoints(tmp_path / "ref" / checkpoints.CHECKPOINT_DIR, every=3, keep=3)
    b = checkpoints.TrainCheckpoints(ckpt_dir, every=3, keep=3)
    assert a.latest_step() == b.latest_step() == 9
    sa, _ = a.restore(9, tr.abstract_state)
    sb, _ = b.restore(9, tr.abstract_state)
    for x, y in zip(jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ra = logging_utils.read_jsonl(tmp_path / "ref")
    rb = logging_utils.read_jsonl(tmp_path / "run")
    assert [r["step"] for r in rb] == list(range(1, 10))
    np.testing.assert_array_equal([r["loss"] for r in ra], [r["loss"] for r in rb])
    a.close()
    b.close()
