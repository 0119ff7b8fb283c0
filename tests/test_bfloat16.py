"""bfloat16 sampling (the accelerator switch) on the embedded models: it runs and stays within 0.5 dB PSNR of
float32 on a held-out photo (slow: every sampler is compiled twice)."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from deqir_jax import sample as dsample
from deqir_jax.sample import prepare_image
from ircore import images, photos
from ircore.config_utils import load_config_file
from resshift_jax import pipeline
from resshift_jax import sample as rsample

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_PSNR_CHANGE_DB = 0.5


@pytest.mark.slow
def test_deqir_bfloat16_prior_stays_close_to_float32(tmp_path):
    psnr = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config_file(REPO / "configs/deqir/sr_bicubic_x4.py", "embedded")
        cfg.model.dtype, cfg.timesteps, cfg.score_lpips = dtype, 10, False
        cfg.output = str(tmp_path / dtype)
        (record,) = dsample.restore_images(cfg, progress=False, log=lambda _: None)
        assert record["status"] == "converged", dtype
        psnr[dtype] = record["psnr"]
    assert abs(psnr["bfloat16"] - psnr["float32"]) < MAX_PSNR_CHANGE_DB, psnr


@pytest.mark.slow
def test_resshift_bfloat16_unet_stays_close_to_float32():
    hq = prepare_image(images.read_image(photos.bundled_path(photos.DEFAULT)), 64, "center_crop")
    psnr = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config_file(REPO / "configs/resshift/embedded_x4.py")
        cfg.sample.dtype = dtype
        res = rsample.degrade_and_restore(hq, pipeline.make_restorer(cfg), rsample.load_networks(cfg),
                                          rsample.image_key(cfg.sample.seed, "chelsea"))
        assert np.all(np.isfinite(res["restored"])), dtype
        psnr[dtype] = rsample.image_scores(res["restored"], res["hq"])["psnr"]
    assert abs(psnr["bfloat16"] - psnr["float32"]) < MAX_PSNR_CHANGE_DB, psnr
