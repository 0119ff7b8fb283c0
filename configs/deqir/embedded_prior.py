"""Training the embedded default DeqIR prior (``configs/deqir/models/embedded_small.py``) on CPU.

Reproduce the shipped weights (``deqir_jax/embedded/prior``; needs ``pip install -e ".[embedded]"`` for the
training photographs of scikit-image and scikit-learn):

    python -m deqir_jax.train --config configs/deqir/embedded_prior.py --workdir runs/deqir_embedded_prior \
        --export deqir_jax/embedded/prior --overwrite

DDPM epsilon loss, batch 16 of 32x32 crops at random scales (``ircore.data`` ``random_scale``) of the 11
training photo files (10 source photographs) of ``ircore.photos`` (the 10 held-out photos are never read),
AdamW 5e-4 with 200 warm-up steps and cosine decay to 5e-5, global-norm clipping at 1, EMA 0.999 with warm-up. ``get_config("smoke")`` is the same
recipe for a few steps (tests).
"""
import pathlib

import ml_collections

from ircore import train_config
from ircore.config_utils import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    if variant not in ("full", "smoke"):
        raise ValueError(f"variant must be 'full' or 'smoke', got {variant!r}")
    cfg = ml_collections.ConfigDict()
    cfg.name = "deqir_embedded_prior"
    cfg.model = load_config_file(_HERE / "models" / "embedded_small.py").model
    # the linear beta schedule of the DeqIR samplers (deqir_jax.schedule: 1000 steps)
    cfg.diffusion = ml_collections.ConfigDict({"beta_start": 1e-4, "beta_end": 2e-2, "num_steps": 1000})
    cfg.train = train_config.train_defaults()
    cfg.train.update({
        "seed": 20261201, "global_batch": 16, "total_steps": 3000, "lr": 5e-4, "lr_min": 5e-5,
        "warmup_steps": 200, "lr_schedule": "cosine", "grad_clip_norm": 1.0, "ema_decay": 0.999, "ema_warmup": True,
        "log_every": 100, "checkpoint_every": 500, "keep_checkpoints": 2, "eval_every": 0,
        "fsdp_min_size": 2**18, "tensorboard": False,
    })
    cfg.data = train_config.data_defaults()
    cfg.data.update({"source": "photos", "photos_split": "train", "crop_size": 32, "rescale": True,
                     "random_scale": True, "hflip": True, "num_threads": 2, "prefetch": 4})
    if variant == "smoke":
        cfg.train.update({"total_steps": 3, "warmup_steps": 1, "global_batch": 8, "log_every": 1,
                          "checkpoint_every": 3, "fast_compile": True})
    return cfg
