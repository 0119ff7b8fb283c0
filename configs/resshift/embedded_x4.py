"""The embedded default ResShift model of this project (not a released model): x4 super-resolution in pixel space.

Reproduce the shipped weights (``resshift_jax/embedded/sr_x4``; needs ``pip install -e ".[embedded]"`` for the
training photographs of scikit-image and scikit-learn):

    python -m resshift_jax.train --config configs/resshift/embedded_x4.py:train --workdir runs/resshift_embedded_x4 \
        --export resshift_jax/embedded/sr_x4 --overwrite

The ``bicsr_x4`` diffusion (4 steps, exponential schedule p 0.3) on images instead of VQ latents
(``autoencoder.kind = "none"``, ``latent_flag = False``), with the official ``residual`` prediction (the network
outputs y - x0, so it starts from bicubic up-sampling and learns the missing detail) and far less noise: kappa
0.1 and min noise level 0.05 instead of the released 2.0 / 0.2, which are sized for VQ latents. Measured in
this budget (held-out photos, 4-step sampling): x0 prediction from scratch stayed 5 dB below bicubic after 1500
steps; residual prediction with kappa 2 predicted as well as bicubic in one step at t = T but lost 3-4 dB over
the chain, and with kappa 0.5 still 4-6 dB after 500 steps (its mid-chain predictions, which must remove noise
of std 0.2-0.35, were worse than bicubic). With kappa 0.1 (this config, 3000 steps) the one-step estimate at
t = T is slightly better than bicubic, and the 4-step result is within 0.4 dB of bicubic at 64x64 (above it on 2
of the 3 held-out photos) but 1.4-2.8 dB below it at full size (benchmarks/quality.py): not yet a model that
beats bicubic; a longer run (GPU) is the next step. The Swin-UNet (1.5 M parameters) sees the noisy image and the
bicubic-upsampled LQ at the output size; its Swin stage works at 1/2 resolution in 4x4 windows, so the 32x32
training crops already hold interior (unmasked) shifted windows, as every larger image does at test time (a
stage whose whole training map is one window does not carry over to large images). Trained with
the MSE loss only (LPIPS weights cannot be had offline) on batches of 16 32x32 HQ crops at random scales of
the 12 training photos of ``ircore.photos`` with MATLAB-bicubic x4 LQ synthesised in the step; AdamW 5e-4,
200 warm-up steps, cosine decay to 5e-5, clipping at 1, EMA 0.999 with warm-up. The held-out photos are never read.
``get_config()`` is the sampling preset (``unet_checkpoint`` = the shipped weights), ``get_config("train")`` the
same with training from scratch, ``get_config("smoke")`` the training recipe for a few steps (tests).
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file
from resshift_jax.embedded import UNET_CHECKPOINT

_HERE = pathlib.Path(__file__).parent


def get_config(variant: str = "sample") -> ml_collections.ConfigDict:
    if variant not in ("sample", "train", "smoke"):
        raise ValueError(f"variant must be 'sample', 'train' or 'smoke', got {variant!r}")
    cfg = load_config_file(_HERE / "base.py", "bicsr_x4")
    cfg.name = "embedded_x4"
    cfg.official_config = ""
    cfg.checkpoint_name = "resshift_jax/embedded/sr_x4"
    cfg.checkpoint_url = ""
    cfg.model.update({
        "image_size": 32, "in_channels": 3, "out_channels": 3, "model_channels": 32, "channel_mult": (1, 2, 2),
        "num_res_blocks": (1, 1, 1), "attention_resolutions": (16,), "num_head_channels": 32, "swin_embed_dim": 64,
        "window_size": 4, "lq_size": 32,
    })
    cfg.autoencoder = ml_collections.ConfigDict({"kind": "none"})
    cfg.diffusion.latent_flag = False
    cfg.diffusion.predict_type = "residual"  # the network predicts y - x0: it starts out as bicubic up-sampling
    cfg.diffusion.kappa = 0.1  # noise std 0.005 .. 0.1 on [-1, 1] pixels instead of 0.2 .. 2 (see above)
    cfg.diffusion.min_noise_level = 0.05
    cfg.padding_offset = 4  # LQ pixels: the x4 output is then a multiple of 16, the UNet's size multiple
    cfg.unet_checkpoint = str(UNET_CHECKPOINT)
    cfg.loss.lpips_weight = 0.0
    cfg.train.update({
        "seed": 20261201, "global_batch": 16, "total_steps": 3000, "lr": 5e-4, "lr_min": 5e-5,
        "warmup_steps": 200, "lr_schedule": "cosine", "grad_clip_norm": 1.0, "ema_decay": 0.999, "ema_warmup": True,
        "log_every": 100, "checkpoint_every": 500, "keep_checkpoints": 2, "eval_every": 0, "tensorboard": False,
    })
    cfg.train.compute_dtype = "float32"
    cfg.train.frozen_dtype = "float32"
    cfg.data.update({"source": "photos", "photos_split": "train", "crop_size": 32, "rescale": True,
                     "random_scale": True, "hflip": True, "num_threads": 2, "prefetch": 4})
    cfg.data.eval.update({"source": "photos", "photos_split": "heldout", "num_images": 3, "batch": 1})
    if variant != "sample":
        cfg.unet_checkpoint = ""  # train from a random initialisation
    if variant == "smoke":
        cfg.train.update({"total_steps": 3, "warmup_steps": 1, "global_batch": 8, "log_every": 1,
                          "checkpoint_every": 3, "fast_compile": True})
    return cfg
