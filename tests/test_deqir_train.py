"""``deqir_jax.train``: the DDPM epsilon objective, the prior trainer on the package photos, export, CLI."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax import models, restore, train
from ircore import checkpoints, data, photos, trainer
from ircore.config_utils import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "deqir" / "embedded_prior.py"


def _tiny_config(steps: int = 3):
    cfg = load_config_file(CONFIG, "smoke")
    cfg.model.update({"num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1, "attention_resolutions": "8",
                      "image_size": 16})
    cfg.data.crop_size = 16
    cfg.train.update({"total_steps": steps, "global_batch": 8, "lr": 2e-3, "warmup_steps": 1,
                      "checkpoint_every": steps, "log_every": steps})
    return cfg


def test_schedule_is_the_samplers_schedule():
    cfg = load_config_file(CONFIG)
    abar = np.asarray(train.abar_from_config(cfg))
    t, at, _ = restore.chain_schedule(25)
    np.testing.assert_array_equal(abar[t], at)  # the chain reads the very values the prior was trained on
    assert abar.shape == (1000,) and np.all(np.diff(abar) < 0)


def test_perfect_predictor_has_zero_loss_and_zero_predictor_unit_loss():
    abar = train.abar_from_config(load_config_file(CONFIG))
    x0 = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1.0, maxval=1.0)
    seen = []

    def oracle(x_t, t):  # recovers eps exactly from x_t, x0 and t
        seen.append(t)
        a = abar[t][:, None, None, None]
        return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)

    key = jax.random.key(1)
    perfect = train.epsilon_loss(oracle, abar, x0, key)
    assert perfect.shape == (8,)
    assert float(jnp.max(perfect)) < 1e-8
    t = np.asarray(seen[0])
    assert t.dtype.kind == "i" and np.all((t >= 0) & (t < 1000)) and len(set(t.tolist())) > 4
    zero = train.epsilon_loss(lambda x, tt: jnp.zeros_like(x), abar, x0, key)
    np.testing.assert_allclose(float(jnp.mean(zero)), 1.0, atol=0.05)  # E[eps^2] = 1 over 6144 draws
    with pytest.raises(ValueError, match="expected epsilon of shape"):
        train.epsilon_loss(lambda x, tt: x[..., :1], abar, x0, key)


def test_unsupported_settings_are_refused():
    cfg = load_config_file(CONFIG)
    cfg.model.learn_sigma = True
    with pytest.raises(train.TrainSetupError, match="learn_sigma"):
        train.make_loss_fn(cfg)
    cfg = load_config_file(CONFIG)
    cfg.model.class_cond = True
    with pytest.raises(train.TrainSetupError, match="unconditional"):
        train.make_loss_fn(cfg)
    cfg = load_config_file(CONFIG)
    cfg.diffusion.num_steps = 500
    with pytest.raises(train.TrainSetupError, match="num_steps must be 1000"):
        train.make_loss_fn(cfg)


@pytest.mark.slow  # ~70-100 s on 2 cores: keeps the quick suite under 15 minutes
def test_training_lowers_the_loss_and_exports_the_ema(tmp_path):
    cfg = _tiny_config(steps=30)
    loss_fn = jax.jit(train.make_loss_fn(cfg))
    init = train.init_params_fn(cfg)(jax.random.key(0))
    # A fixed held-out batch and key: the loss on it before and after training.
    batch = {"hq": np.stack([data.center_crop(photos.load(n), 16) for n in photos.HELDOUT] * 2)}
    key = jax.random.key(5)
    before = np.mean([float(loss_fn(init, {}, batch, jax.random.fold_in(key, i))[0]) for i in range(8)])
    state = train.train(cfg, tmp_path / "run", export=str(tmp_path / "export"), print_fn=None)
    assert int(state.step) == 30
    after = np.mean([float(loss_fn(state.params, {}, batch, jax.random.fold_in(key, i))[0]) for i in range(8)])
    assert after < 0.7 * before, (before, after)
    exported = checkpoints.restore_params(tmp_path / "export")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           exported, jax.device_get(state.ema_params))
    meta = checkpoints.restore_metadata(tmp_path / "export")
    assert meta["step"] == 30 and meta["kind"] == "deqir_prior" and meta["model"]["num_channels"] == 32
    # the exported prior is what the samplers load: it runs as an eps model at another size
    eps = models.model_from_config(cfg.model).apply({"params": exported}, jnp.zeros((2, 32, 32, 3)),
                                                    jnp.array([10, 900]))
    assert eps.shape == (2, 32, 32, 3) and bool(jnp.all(jnp.isfinite(eps)))
    with pytest.raises(trainer.TrainSetupError, match="already exists; pass --overwrite"):
        train.train(cfg, tmp_path / "run2", export=str(tmp_path / "export"), print_fn=None)
    assert not (tmp_path / "run2").exists()  # refused before anything was written


@pytest.mark.slow
def test_cli_trains_resumes_and_exports(tmp_path):
    workdir, export = tmp_path / "run", tmp_path / "prior"
    args = [sys.executable, "-m", "deqir_jax.train", f"--config={CONFIG}:smoke", f"--workdir={workdir}",
            f"--export={export}", "--config.model.num_channels=32", "--config.model.channel_mult=1,2",
            "--config.model.num_res_blocks=1", "--config.model.image_size=16", "--config.data.crop_size=16"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exported the EMA parameters of step 3" in proc.stdout
    assert checkpoints.restore_metadata(export)["step"] == 3
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode != 0 and "already exists; pass --overwrite" in again.stderr
    more = subprocess.run(args[:-5] + ["--overwrite", "--config.train.total_steps=4"] + args[-5:],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resumed from step 3" in more.stdout and checkpoints.restore_metadata(export)["step"] == 4
