"""The embedded default models this project trained and ships, and the no-argument sampling commands.

The thresholds are properties any useful model must have, not values measured on these weights: a prior
that denoises held-out photos better than predicting zero noise, and a super-resolution model whose one-shot
estimate at t = T (from the LQ image alone) is closer to photos it never saw than the degraded input is, and
whose 4-step result beats bicubic up-sampling at the benchmark's 64x64 setting (the bar issue 6 sets; the full
table, full size included, is benchmarks/quality.py).
"""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax import models, train
from deqir_jax.embedded import PRIOR_CHECKPOINT
from deqir_jax.models import adm
from deqir_jax.sample import prepare_image
from ircore import checkpoints, images, metrics, photos
from ircore.config_utils import load_config_file
from resshift_jax import diffusion, pipeline
from resshift_jax import sample as rsample
from resshift_jax.embedded import UNET_CHECKPOINT
from resshift_jax.models import unet_swin
from resshift_jax.schedule import schedule_from_config

REPO = pathlib.Path(__file__).resolve().parents[1]
DEQIR_TRAIN = REPO / "configs/deqir/embedded_prior.py"
RESSHIFT = REPO / "configs/resshift/embedded_x4.py"


def _size_mb(folder: pathlib.Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _same_shapes(params, shapes) -> None:
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(shapes)):
        assert a.shape == b.shape and a.dtype == np.float32


def test_checkpoints_are_small_and_fit_their_configs():
    assert _size_mb(PRIOR_CHECKPOINT) + _size_mb(UNET_CHECKPOINT) < 20.0
    prior_cfg = load_config_file(DEQIR_TRAIN)
    _same_shapes(checkpoints.restore_params(PRIOR_CHECKPOINT), adm.init_params_shapes(prior_cfg.model))
    meta = checkpoints.restore_metadata(PRIOR_CHECKPOINT)
    assert meta["kind"] == "deqir_prior" and meta["step"] == prior_cfg.train.total_steps
    assert meta["model"] == prior_cfg.model.to_dict()
    sr_cfg = load_config_file(RESSHIFT)
    _same_shapes(checkpoints.restore_params(UNET_CHECKPOINT),
                 unet_swin.param_shapes(unet_swin.model_from_config(sr_cfg)))
    meta = checkpoints.restore_metadata(UNET_CHECKPOINT)
    assert meta["part"] == "unet" and meta["step"] == load_config_file(RESSHIFT, "train").train.total_steps
    # the presets point at the shipped folders
    assert pathlib.Path(sr_cfg.unet_checkpoint) == UNET_CHECKPOINT
    assert pathlib.Path(load_config_file(REPO / "configs/deqir/sr_x4.py", "embedded").checkpoint) == PRIOR_CHECKPOINT


def test_prior_denoises_heldout_photos_at_the_restoration_size():
    cfg = load_config_file(REPO / "configs/deqir/sr_bicubic_x4.py", "embedded")
    model = models.model_from_config(cfg.model)
    params = checkpoints.restore_params(cfg.checkpoint)
    abar = train.abar_from_config(load_config_file(DEQIR_TRAIN))
    x0 = jnp.concatenate([jnp.asarray(prepare_image(photos.read(n), cfg.image_size, cfg.resize))
                          for n in photos.HELDOUT])
    eps_fn = jax.jit(lambda x, t: model.apply({"params": params}, x, t))
    for t in (50, 300, 600, 900):
        key = jax.random.fold_in(jax.random.key(0), t)
        eps = jax.random.normal(key, x0.shape)
        tt = jnp.full((x0.shape[0],), t, jnp.int32)
        mse = float(jnp.mean((eps_fn(train.q_sample(abar, x0, tt, eps), tt) - eps) ** 2))
        assert mse < 0.5, (t, mse)  # predicting zero noise scores 1.0


@pytest.mark.slow  # ~70-100 s on 2 cores: keeps the quick suite under 15 minutes
def test_resshift_small_restores_heldout_photos():
    cfg = load_config_file(RESSHIFT)
    nets = rsample.load_networks(cfg)
    restorer = pipeline.make_restorer(cfg)
    assert nets[1] is None  # pixel space: no autoencoder
    unet = unet_swin.model_from_config(cfg)
    sched = schedule_from_config(cfg.diffusion)
    gains = []
    for name in photos.HELDOUT:
        hq = photos.read(name)
        top, left = hq.shape[1] // 2 - 48, hq.shape[2] // 2 - 48
        res = rsample.degrade_and_restore(hq[:, top:top + 96, left:left + 96], restorer, nets,
                                          rsample.image_key(cfg.sample.seed, name))
        assert res["restored"].shape == res["hq"].shape and np.all(np.abs(res["restored"]) <= 1.0)
        # the network's estimate at t = T, where x_T carries no trace of the clean image
        z_y = diffusion.upsample_lq(sched, jnp.asarray(res["lq"]))
        t = jnp.full((1,), sched.num_timesteps - 1)
        x_T = diffusion.q_sample(sched, jnp.asarray(res["hq"]), z_y, t, jax.random.normal(jax.random.key(0), z_y.shape))
        out = unet.apply({"params": nets[0]}, diffusion.scale_input(sched, x_T, t), diffusion.model_timesteps(sched, t),
                         lq=z_y)
        x0 = diffusion.predict_xstart(sched, out, x_T, z_y, t)
        err_T = np.mean((np.asarray(x_T) - res["hq"]) ** 2)
        assert np.mean((np.asarray(x0) - res["hq"]) ** 2) < err_T, name
        assert np.mean((res["restored"] - res["hq"]) ** 2) < err_T, name  # the chain improves on its start
        # issue 17's bar, at the benchmark's 64x64 setting (the whole photo, centre-cropped and resized): never
        # more than 0.3 dB below bicubic up-sampling of the same LQ, and +0.3 dB on average over the held-out set.
        # (benchmarks/results/quality.json: +0.73 dB mean, worst -0.26 dB on rocket.)
        small = prepare_image(hq, 64, "center_crop")
        res = rsample.degrade_and_restore(small, restorer, nets, rsample.image_key(cfg.sample.seed, name))
        gain = rsample.image_scores(res["restored"], res["hq"])["psnr"] - \
            rsample.image_scores(res["bicubic"], res["hq"])["psnr"]
        assert gain > -0.3, (name, gain)
        gains.append(gain)
    assert np.mean(gains) >= 0.3, gains


def _run_without_arguments(module: str, cwd: pathlib.Path) -> pathlib.Path:
    """Runs ``python -m module`` in ``cwd`` and returns the results folder it printed (exactly one)."""
    proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.findall(r"^results in (.+)$", proc.stdout, flags=re.M)
    assert len(found) == 1, proc.stdout
    return pathlib.Path(found[0])


@pytest.mark.slow
def test_deqir_sample_with_no_arguments(tmp_path):
    folder = _run_without_arguments("deqir_jax.sample", tmp_path)
    assert folder.parent.parent == (tmp_path / "outputs" / "deqir").resolve() and folder.name == "chelsea"
    for name in ("restored.png", "measurement.png", "reference.png", "side_by_side.png", "metrics.json",
                 "convergence.png"):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "metrics.json").read_text())
    assert record["task"] == "sr_bicubic" and record["sampler"] == "parallel" and record["image_size"] == 64
    assert record["solver"] == "triangular" and record["status"] == "converged"  # the default solve, no special case
    assert record["image"] == str(photos.bundled_path(photos.DEFAULT))
    assert images.read_image(folder / "restored.png").shape == (1, 64, 64, 3)
    assert images.read_image(folder / "measurement.png").shape == (1, 16, 16, 3)
    # labelled figure: degraded y | A+y | restored | reference, each 64 px shown at 256, plus the zoom row
    side = images.read_image(folder / "side_by_side.png")
    assert side.shape[2] == 4 * 256 + 3 * 6 and side.shape[1] - (6 + 256 + 6 + 256) in (22, 40)  # 1 or 2 label lines
    assert record["psnr"] > 15.0 and len(record["residual_history"]) == record["map_evaluations"]
    # the A^+ y baseline is scored too (the embedded prior does not beat it on chelsea: issue 17)
    assert record["baseline"]["name"] == "A+y" and np.isfinite(record["baseline"]["psnr"])
    assert 0.0 < record["lpips"] < 1.0 and 0.0 < record["baseline"]["lpips"] < 1.0


@pytest.mark.slow
def test_resshift_sample_with_no_arguments(tmp_path):
    folder = _run_without_arguments("resshift_jax.sample", tmp_path)
    assert folder.parent == (tmp_path / "outputs" / "resshift").resolve()
    record = json.loads((folder / "metrics.json").read_text())
    hq = images.read_image(photos.bundled_path(photos.DEFAULT))
    assert record["hq_size"] == [hq.shape[1] // 4 * 4, hq.shape[2] // 4 * 4] and record["model"] == "embedded_x4"
    for name in ("lq.png", "bicubic.png", "restored.png", "reference.png", "side_by_side.png"):
        assert (folder / name).is_file(), name
    ref = images.to_unit(images.read_image(folder / "reference.png"))
    for name in ("restored", "bicubic"):  # the recorded scores are those of the written 8-bit files
        written = images.to_unit(images.read_image(folder / f"{name}.png"))
        assert abs(float(metrics.psnr(written, ref)[0]) - record[name]["psnr"]) < 0.05, name
        assert record[name]["lpips"] is not None  # the test extra installs the LPIPS weights
    side = images.read_image(folder / "side_by_side.png")  # labelled LQ | bicubic | restored | reference + zoom row
    h, w = record["hq_size"]
    f = max(1, -(-256 // h))  # panels enlarged (nearest) to at least 256 px high
    assert side.shape[2] == 4 * w * f + 3 * 6 and side.shape[1] - (6 + h * f + 6 + h * f) in (22, 40, 58)
