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
* ``sample``: the sampler settings of ``python -m resshift_jax.sample`` (``resshift_jax.sample_config.sample_section``);
  ``input``, ``input_is_measurement``, ``reference``, ``mask``, ``output``, ``overwrite``: its input / output;
  ``unet_checkpoint`` / ``autoencoder_checkpoint``: the converted orbax folders (from ``training.py``).
* training sections (``task``, ``train``, ``loss``, ``lpips``, ``data``, ``degradation``, checkpoints to start
  from), read by ``python -m resshift_jax.train``: see ``training.py``.
"""
import dataclasses
import pathlib

import ml_collections

from ircore.config_utils import load_config_file
from resshift_jax.sample_config import sample_section

_HERE = pathlib.Path(__file__).parent
_RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"

@dataclasses.dataclass(frozen=True)
class Release:
    """One released model: its official YAML, weights and the settings that differ between the releases."""

    official_yaml: str
    unet_checkpoint: str
    vq_checkpoint: str
    sf: int
    steps: int
    min_noise_level: float
    lq_size: int
    cond_mask: bool
    latent_channels: int


_SR = dict(sf=4, lq_size=64, cond_mask=False, latent_channels=3, vq_checkpoint="autoencoder_vq_f4.pth")
MODELS = {
    "realsr_x4_v1": Release(official_yaml="realsr_swinunet_realesrgan256",
                            unet_checkpoint="resshift_realsrx4_s15_v1.pth", steps=15, min_noise_level=0.04, **_SR),
    "realsr_x4_v2": Release(official_yaml="realsr_swinunet_realesrgan256",
                            unet_checkpoint="resshift_realsrx4_s15_v2.pth", steps=15, min_noise_level=0.04, **_SR),
    "realsr_x4_v3": Release(official_yaml="realsr_swinunet_realesrgan256_journal",
                            unet_checkpoint="resshift_realsrx4_s4_v3.pth", steps=4, min_noise_level=0.2, **_SR),
    "bicsr_x4": Release(official_yaml="bicx4_swinunet_lpips", unet_checkpoint="resshift_bicsrx4_s4.pth",
                        steps=4, min_noise_level=0.2, **_SR),
    "inpaint_imagenet": Release(official_yaml="inpaint_lama256_imagenet",
                                unet_checkpoint="resshift_inpainting_imagenet_s4.pth",
                                vq_checkpoint="autoencoder_vq_f4.pth", sf=1, steps=4, min_noise_level=0.2,
                                lq_size=256, cond_mask=True, latent_channels=3),
    "inpaint_face": Release(official_yaml="inpaint_lama256_face", unet_checkpoint="resshift_inpainting_face_s4.pth",
                            vq_checkpoint="celeba256_vq_f4_dim3_face.pth", sf=1, steps=4, min_noise_level=0.2,
                            lq_size=256, cond_mask=True, latent_channels=3),
    "faceir": Release(official_yaml="faceir_gfpgan512_lpips", unet_checkpoint="resshift_faceir_s4.pth",
                      vq_checkpoint="ffhq512_vq_f8_dim8_face.pth", sf=1, steps=4, min_noise_level=0.2,
                      lq_size=512, cond_mask=False, latent_channels=8),
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
    release = MODELS[name]
    cfg = ml_collections.ConfigDict()
    cfg.name = name
    cfg.official_config = f"configs/{release.official_yaml}.yaml"
    cfg.checkpoint_name = release.unet_checkpoint
    cfg.checkpoint_url = _RELEASE + release.unet_checkpoint
    cfg.model = _unet(release.lq_size, release.cond_mask, release.latent_channels)
    cfg.diffusion = _diffusion(release.sf, release.steps, release.min_noise_level)
    cfg.autoencoder = _autoencoder(release.vq_checkpoint)
    cfg.padding_offset = release.lq_size  # the official sampler pads the LQ image to a multiple of this
    # Input / output of python -m resshift_jax.sample (the same fields as deqir_jax.sample).
    cfg.input = ""  # an image or a folder of images
    cfg.input_is_measurement = True  # True: `input` holds LQ images; False: a clean image to degrade and score
    cfg.reference = ""  # ground truth for scores when `input` holds LQ images (a file, or a folder of same names)
    cfg.mask = ""  # inpainting models: the mask (a file, or a folder of same-named files; white / 1 = unknown)
    cfg.output = ""  # results folder; "" = a fresh outputs/resshift/run-<date>-<time> folder
    cfg.overwrite = False  # never replace earlier results unless asked
    cfg.score_lpips = True  # report LPIPS next to PSNR / SSIM when the lpips extra is installed
    cfg.compilation_cache = "auto"  # JAX's persistent compilation cache: "auto" (a per-user folder), a path, "off"
    cfg.sample = sample_section(release.sf)  # sampler settings: seed, tiling, batch, dtype, masking
    for key, value in load_config_file(_HERE / "training.py", name).items():  # train/data/loss/... sections
        cfg[key] = value
    return cfg
