"""Pixel-space ResShift (``autoencoder.kind = "none"``, the embedded default model): the train loss, the
restorer, and the ``resshift_jax.sample`` clean-image mode (``input_is_measurement=False``, the no-argument
default)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ircore import checkpoints, data, images, metrics, photos
from ircore.config_utils import load_config_file
from resshift_jax import diffusion, pipeline, resize, sample, sample_config
from resshift_jax.schedule import schedule_from_config
from resshift_jax import train as rtrain
from resshift_jax.degradations import bicubic_degrade
from resshift_jax.models import unet_swin, vq

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/resshift/embedded_x4.py"


@pytest.fixture(scope="module")
def smoke():
    cfg = load_config_file(CONFIG, "smoke")
    params = rtrain.init_params_fn(cfg)(jax.random.key(0))
    return cfg, params


def test_embedded_config_is_pixel_space():
    cfg = load_config_file(CONFIG)
    assert vq.is_pixel_space(cfg.autoencoder) and not cfg.diffusion.latent_flag
    assert cfg.model.lq_size == cfg.model.image_size  # the condition enters at the output size
    assert cfg.task == "bicsr" and cfg.loss.lpips_weight == 0.0
    assert load_config_file(CONFIG, "train").unet_checkpoint == ""  # training starts from scratch
    assert not vq.is_pixel_space(load_config_file(REPO / "configs/resshift/bicsr_x4.py").autoencoder)
    assert rtrain.load_frozen(load_config_file(CONFIG, "train")) == {}  # nothing frozen, no VQ needed


def test_pixel_space_loss_is_the_diffusion_loss_on_images(smoke):
    cfg, params = smoke
    unet, autoencoder = rtrain._networks(cfg)
    assert autoencoder is None
    sched = schedule_from_config(cfg.diffusion)
    hq_u8 = np.asarray([data.center_crop(photos.load(n), 32) for n in ("astronaut", "rocket")])
    key = jax.random.key(3)
    loss, aux = jax.jit(rtrain.make_loss_fn(cfg))(params, {}, {"hq": hq_u8}, key)
    hq = data.hq_to_float(jnp.asarray(hq_u8))
    lq = bicubic_degrade(hq, 4)
    _, k_t, k_noise = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (2,), 0, sched.num_timesteps)
    noise = jax.random.normal(k_noise, hq.shape, jnp.float32)
    up = resize.interpolate_bicubic(lq, scale_factor=4.0)

    def model_fn(x, tt, cond):  # the network sees the bicubic-upsampled LQ
        return unet.apply({"params": params}, x, tt, lq=up, mask=None)

    ref = diffusion.training_loss(model_fn, sched, hq, up, t, noise, None)
    np.testing.assert_allclose(float(loss), float(jnp.mean(ref["mse"])), rtol=1e-5)
    np.testing.assert_allclose(float(aux["mse"]), float(loss), rtol=1e-6)


def test_pixel_space_restorer_is_the_sampler_on_images(smoke):
    cfg, params = smoke
    lq = np.asarray(bicubic_degrade(photos.read("coffee")[:, :64, :64], 4))  # 16x16
    shape = (1, 64, 64, 3)
    noises = pipeline.draw_noises(jax.random.key(1), shape, int(cfg.diffusion.steps))
    one_tile = ml_collections.ConfigDict(cfg.to_dict())
    one_tile.sample = sample_config.sample_section(cfg.diffusion.sf)  # official tiling: one tile covers the image
    restorer = pipeline.make_restorer(one_tile)
    out = restorer(lq, params, None, noises=noises)
    unet = unet_swin.model_from_config(cfg)
    sched = schedule_from_config(cfg.diffusion)

    def model_fn(x, t, cond):
        return unet.apply({"params": params}, x, t, lq=diffusion.upsample_lq(sched, cond[0]), mask=None)

    ref = diffusion.restore_lq(model_fn, sched, jnp.asarray(lq), encode_fn=None, decode_fn=None, noise_T=noises[0],
                               step_noises=noises[1], cond=(jnp.asarray(lq), None), pad_multiple=8)
    assert out.shape == shape
    # the same arithmetic in two compiled programs, 4 chained UNet steps (XLA fuses them differently)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
    # any size: padded to the UNet's multiple and cropped back
    odd = restorer(lq[:, :13, :11], params, None, jax.random.key(0))
    assert odd.shape == (1, 52, 44, 3) and float(jnp.max(jnp.abs(odd))) <= 1.0


def test_degrade_and_restore_scores_against_the_clean_image(smoke, tmp_path):
    cfg, params = smoke
    hq = photos.read("flower")[:, :70, :90]  # cropped to a multiple of 4: 68 x 88
    res = sample.degrade_and_restore(hq, pipeline.make_restorer(cfg), (params, None), jax.random.key(0))
    assert res["hq"].shape == (1, 68, 88, 3) and res["lq"].shape == (1, 17, 22, 3)
    assert res["restored"].shape == res["bicubic"].shape == (1, 68, 88, 3)
    np.testing.assert_allclose(res["lq"], np.asarray(bicubic_degrade(hq[:, :68, :88], 4)), atol=1e-6)
    face = load_config_file(REPO / "configs/resshift/inpaint_imagenet.py")
    with pytest.raises(sample.SampleError, match="not a super-resolution model"):
        sample.degrade_and_restore(hq, pipeline.make_restorer(face), (params, None), jax.random.key(0))


@pytest.mark.slow
def test_sample_cli_clean_image_mode(smoke, tmp_path):
    cfg, params = smoke
    ckpt = checkpoints.save_params(tmp_path / "unet", params, {"part": "unet"})
    photo = tmp_path / "cat.png"
    images.write_png(photo, photos.read("chelsea")[:, 100:164, 150:214])
    out = tmp_path / "out"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "resshift_jax.sample", f"--config.unet_checkpoint={ckpt}",
                               *map(str, args)], capture_output=True, text=True, timeout=600, cwd=REPO)

    proc = cli(f"--config.input={photo}", f"--config.output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"results in {out.resolve()}" in proc.stdout
    record = json.loads((out / "metrics.json").read_text())
    assert record["lq_size"] == [16, 16] and record["hq_size"] == [64, 64] and record["nfe"] == 4
    ref = images.to_unit(images.read_image(out / "reference.png"))
    bic = images.to_unit(images.read_image(out / "bicubic.png"))
    assert abs(float(metrics.psnr(bic, ref)[0]) - record["bicubic"]["psnr"]) < 0.05  # 8-bit files, same numbers
    side = images.read_image(out / "side_by_side.png")
    # labelled LQ | bicubic | restored | reference, the 64x64 panels shown at 256 px, one or two label lines, zoom row
    assert side.shape[2] == 4 * 256 + 3 * 6 and side.shape[1] - (6 + 256 + 6 + 256) in (22, 40)
    again = cli(f"--config.input={photo}", f"--config.output={out}")
    assert again.returncode == 1 and "already holds" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    masked = cli(f"--config.input={photo}", f"--config.mask={photo}", f"--config.output={tmp_path / 'o2'}")
    assert masked.returncode == 1 and "go with LQ inputs" in masked.stderr
