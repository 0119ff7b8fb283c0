"""A tiny ResShift training set-up for tests and smoke runs (CPU, seconds per step).

The released ``realsr_x4_v3`` recipe (4 steps, MSE + LPIPS, bicubic or Real-ESRGAN LQ) with a ~0.2 M-parameter
Swin-UNet on 8x8 latents, a random frozen VQ-f4 (32x32 HQ crops -> 8x8x3 latents) and random LPIPS weights.
``get_config("realsr")`` (default) synthesises Real-ESRGAN LQ images; ``get_config("bicsr")`` uses the
bicubic degradation. Point ``data.folder`` at some images (``--config.data.folder=DIR``).
"""
import pathlib

from ircore.config_utils import load_config_file

_HERE = pathlib.Path(__file__).parent


def get_config(task: str = "bicsr"):
    if task not in ("bicsr", "realsr"):
        raise ValueError(f"tiny_train supports task 'bicsr' or 'realsr', got {task!r}")
    cfg = load_config_file(_HERE / "base.py", "realsr_x4_v3" if task == "realsr" else "bicsr_x4")
    cfg.name = f"tiny_train_{task}"
    cfg.model.update({
        "image_size": 8, "model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": (1, 1),
        "attention_resolutions": (8,), "num_head_channels": 16, "swin_embed_dim": 32, "window_size": 4,
        "lq_size": 8,
    })
    cfg.autoencoder.params.n_embed = 64
    cfg.autoencoder.params.ddconfig.update({"ch": 32, "ch_mult": (1, 1, 2), "num_res_blocks": 1, "resolution": 32})
    cfg.autoencoder_random_init = True
    cfg.lpips.random_init = True
    cfg.loss.lpips_weight = 0.0  # LPIPS-VGG costs seconds per step on a CPU; tests switch it on where needed
    cfg.padding_offset = 8
    cfg.train.update({
        "global_batch": 8, "total_steps": 6, "warmup_steps": 2, "lr": 1e-3, "lr_min": 1e-4, "log_every": 1,
        "checkpoint_every": 2, "keep_checkpoints": 5, "eval_every": 0, "fsdp_min_size": 4096,
        "mesh_shape": (-1, 1), "seed": 0, "fast_compile": True,
    })
    cfg.train.compute_dtype = "bfloat16"
    cfg.train.frozen_dtype = "float32"
    cfg.data.update({"crop_size": 32, "num_threads": 2, "prefetch": 2})
    cfg.data.eval.update({"num_images": 2, "batch": 2})
    return cfg
