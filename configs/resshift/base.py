"""Released ResShift models (zsyOAOA/ResShift, release v2.0) as ``ml_collections`` configs.

``get_config(name)`` with ``name`` one of :data:`MODELS`; the preset files next to this one
(``realsr_x4_v3.py`` ...) call it with their own name. Sections:

* ``model``: keyword arguments of ``resshift_jax.models.unet_swin.UNetModelSwin`` (the official
  ``model.params`` of ``configs/*.yaml``); ``num_head_channels`` fixes the Swin heads (``num_heads`` is
  used only when ``num_head_channels`` is -1).
* ``diffusion``: the official ``diffusion.params`` (exponential eta schedule, ``schedule_kwargs.power`` = p).
* ``autoencoder``: which VQ model (``kind`` ``vq_f4`` / ``vq_f8``) with the official ``params``, loaded from
  ``autoencoders/vq_f4.py`` / ``vq_f8.py``.
* ``checkpoint_name`` / ``checkpoint_url``: the released UNet weights; ``autoencoder.checkpoint_name`` the VQ.
* training sections (``task``, ``train``, ``loss``, ``lpips``, ``data``, ``degradation``, checkpoints to start
  from), read by ``python -m resshift_jax.train``: see ``training.py``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file

_HERE = pathlib.Path(__file__).parent
_RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"

# name: (official yaml, UNet checkpoint, VQ checkpoint, sf, steps, min_noise_level, lq_size, cond_mask, latent ch)
MODELS = {
    "realsr_x4_v1": ("realsr_swinunet_realesrgan256", "resshift_realsrx4_s15_v1.pth", "autoencoder_vq_f4.pth",
                     4, 15, 0.04, 64, False, 3),
    "realsr_x4_v2": ("realsr_swinunet_realesrgan256", "resshift_realsrx4_s15_v2.pth", "autoencoder_vq_f4.pth",
                     4, 15, 0.04, 64, False, 3),
    "realsr_x4_v3": ("realsr_swinunet_realesrgan256_journal", "resshift_realsrx4_s4_v3.pth",
                     "autoencoder_vq_f4.pth", 4, 4, 0.2, 64, False, 3),
    "bicsr_x4": ("bicx4_swinunet_lpips", "resshift_bicsrx4_s4.pth", "autoencoder_vq_f4.pth",
                 4, 4, 0.2, 64, False, 3),
    "inpaint_imagenet": ("inpaint_lama256_imagenet", "resshift_inpainting_imagenet_s4.pth",
                         "autoencoder_vq_f4.pth", 1, 4, 0.2, 256, True, 3),
    "inpaint_face": ("inpaint_lama256_face", "resshift_inpainting_face_s4.pth", "celeba256_vq_f4_dim3_face.pth",
                     1, 4, 0.2, 256, True, 3),
    "faceir": ("faceir_gfpgan512_lpips", "resshift_faceir_s4.pth", "ffhq512_vq_f8_dim8_face.pth",
               1, 4, 0.2, 512, False, 8),
}


def _unet(lq_size: int, cond_mask: bool, latent_channels: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "image_size": 64,
        "in_channels": latent_channels,
        "model_channels": 160,
        "out_channels": latent_channels,
        "attention_resolutions": (64, 32, 16, 8),
        "dropout": 0.0,
        "channel_mult": (1, 2, 2, 4),
        "num_res_blocks": (2, 2, 2, 2),
        "conv_resample": True,
        "num_heads": 1,
        "num_head_channels": 32,
        "use_scale_shift_norm": True,
        "resblock_updown": False,
        "swin_depth": 2,
        "swin_embed_dim": 192,
        "window_size": 8,
        "mlp_ratio": 4.0,
        "patch_norm": False,
        "cond_lq": True,
        "cond_mask": cond_mask,
        "lq_size": lq_size,
    })


def _diffusion(sf: int, steps: int, min_noise_level: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "sf": sf,
        "schedule_name": "exponential",
        "schedule_kwargs": {"power": 0.3},
        "etas_end": 0.99,
        "steps": steps,
        "min_noise_level": min_noise_level,
        "kappa": 2.0,
        "weighted_mse": False,
        "predict_type": "xstart",
        "timestep_respacing": None,
        "scale_factor": 1.0,
        "normalize_input": True,
        "latent_flag": True,
    })


# VQ checkpoint -> (config file under autoencoders/, its argument)
_AUTOENCODERS = {
    "autoencoder_vq_f4.pth": ("vq_f4.py", "imagenet"),
    "celeba256_vq_f4_dim3_face.pth": ("vq_f4.py", "face"),
    "ffhq512_vq_f8_dim8_face.pth": ("vq_f8.py", None),
}


def _autoencoder(checkpoint_name: str) -> ml_collections.ConfigDict:
    file, arg = _AUTOENCODERS[checkpoint_name]
    cfg = load_config_file(_HERE / "autoencoders" / file, arg)
    if cfg.checkpoint_name != checkpoint_name:
        raise ValueError(f"autoencoders/{file} gives {cfg.checkpoint_name}, expected {checkpoint_name}")
    return cfg


def get_config(name: str = "realsr_x4_v3") -> ml_collections.ConfigDict:
    if name not in MODELS:
        raise ValueError(f"unknown ResShift model {name!r}; expected one of {sorted(MODELS)}")
    yaml, ckpt, vq_ckpt, sf, steps, min_noise, lq_size, cond_mask, latent_ch = MODELS[name]
    cfg = ml_collections.ConfigDict()
    cfg.name = name
    cfg.official_config = f"configs/{yaml}.yaml"
    cfg.checkpoint_name = ckpt
    cfg.checkpoint_url = _RELEASE + ckpt
    cfg.model = _unet(lq_size, cond_mask, latent_ch)
    cfg.diffusion = _diffusion(sf, steps, min_noise)
    cfg.autoencoder = _autoencoder(vq_ckpt)
    cfg.padding_offset = lq_size  # the official sampler pads the LQ image to a multiple of this
    for key, value in load_config_file(_HERE / "training.py", name).items():  # train/data/loss/... sections
        cfg[key] = value
    return cfg
