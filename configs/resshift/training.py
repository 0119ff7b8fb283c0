"""Training sections of the released ResShift models (official ``train`` / ``data`` / loss settings).

``get_config(name)`` returns a ConfigDict with the sections that ``python -m resshift_jax.train`` reads; the
model presets (``realsr_x4_v3.py`` ...) include them through ``base.py``, so every field can be overridden on
the command line (``--config.train.global_batch=32``):

* ``task``: ``realsr`` (Real-ESRGAN LQ), ``bicsr`` (MATLAB bicubic LQ), ``inpaint`` (LaMa masks), ``faceir``
  (GFPGAN face degradation) -- how the train step makes the LQ input from an HQ crop.
* ``train``: :func:`ircore.trainer.default_config` with the official batch, iterations and schedule
  (spec section 5), plus ``compute_dtype`` (UNet) and ``frozen_dtype`` (VQ and LPIPS).
* ``loss``: ``mse_weight`` / ``lpips_weight`` (v1/v2: MSE only; journal configs: + 1 x LPIPS for SR, + 10 x
  LPIPS for inpainting and faces).
* ``lpips``: the user's weight files (torchvision ``vgg16`` and LPIPS v0.1 ``vgg.pth``; nothing is downloaded).
* ``data``: :func:`ircore.data.default_config` with the official crop size.
* ``degradation``: the task's section of ``degradation_realesrgan.py`` (None for ``bicsr``).
* ``unet_checkpoint`` (optional initial UNet, e.g. to fine-tune) and ``autoencoder_checkpoint`` (required:
  the frozen VQ), both orbax folders written by ``python -m resshift_jax.convert`` (or ``.pth`` files).
"""
import pathlib

import ml_collections

from ircore import data, trainer
from ircore.config_utils import load_config_file

_HERE = pathlib.Path(__file__).parent

# name: (task, global batch, iterations, schedule, lpips weight, HQ crop, degradation config)
_RECIPES = {
    "realsr_x4_v1": ("realsr", 64, 300_000, "constant", 0.0, 256, "realsr_x4"),
    "realsr_x4_v2": ("realsr", 64, 500_000, "constant", 0.0, 256, "realsr_x4"),
    "realsr_x4_v3": ("realsr", 96, 400_000, "cosine", 1.0, 256, "realsr_x4"),
    "bicsr_x4": ("bicsr", 96, 400_000, "cosine", 1.0, 256, None),
    "inpaint_imagenet": ("inpaint", 96, 400_000, "cosine", 10.0, 256, "inpaint"),
    "inpaint_face": ("inpaint", 96, 400_000, "cosine", 10.0, 256, "inpaint"),
    "faceir": ("faceir", 56, 400_000, "cosine", 10.0, 512, "faceir"),
}


def get_config(name: str = "realsr_x4_v3") -> ml_collections.ConfigDict:
    if name not in _RECIPES:
        raise ValueError(f"no training recipe for {name!r}; expected one of {sorted(_RECIPES)}")
    task, batch, iterations, schedule, lpips_weight, crop, degradation = _RECIPES[name]
    cfg = ml_collections.ConfigDict()
    cfg.task = task
    cfg.train = trainer.default_config()
    cfg.train.update({"global_batch": batch, "total_steps": iterations, "lr_schedule": schedule,
                      "lr_min": 2e-5 if schedule == "cosine" else 5e-5})
    cfg.train.compute_dtype = "bfloat16"
    cfg.train.frozen_dtype = "bfloat16"
    cfg.train.eval_seed = 10_000
    cfg.loss = ml_collections.ConfigDict({"mse_weight": 1.0, "lpips_weight": lpips_weight})
    cfg.lpips = ml_collections.ConfigDict({"vgg_weights": "", "lin_weights": "", "random_init": False})
    cfg.data = data.default_config()
    cfg.data.crop_size = crop
    cfg.degradation = None if degradation is None else load_config_file(
        _HERE / "degradation_realesrgan.py", degradation)
    cfg.unet_checkpoint = ""
    cfg.autoencoder_checkpoint = ""
    cfg.autoencoder_random_init = False  # tests / benchmarks only: a random frozen VQ
    return cfg
