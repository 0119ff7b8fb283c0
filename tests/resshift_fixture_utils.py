"""Shared helpers for the ResShift restorer / sampler tests: the tiny fixture networks as a config.

Everything is read from the fixture files and their sidecars (``resshift/sampling_tiny`` names the UNet and
VQ fixtures it was recorded with); fixture arrays are NCHW and transposed to NHWC here only.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import torch
from skimage import data as skdata
from skimage.transform import resize as sk_resize

from ircore import checkpoints
from ircore.config_utils import load_config_file
from resshift_jax import convert, sample_config
from resshift_jax.models import vq

REPO = pathlib.Path(__file__).resolve().parents[1]


def nhwc(a) -> np.ndarray:
    return np.moveaxis(np.asarray(a), -3, -1)


def state_dict(fx) -> dict[str, np.ndarray]:
    """The ``sd/...`` arrays of a network fixture as a PyTorch-style state dict."""
    return {k[len("sd/"):]: np.asarray(fx[k]) for k in fx.files if k.startswith("sd/")}


def write_pth(fx, path: pathlib.Path) -> pathlib.Path:
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict(fx).items()}, path)
    return path


def photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photo from skimage.data, resized, as (1, h, w, 3) float32 in [-1, 1]."""
    rgb = getattr(skdata, name)()[..., :3]
    small = sk_resize(rgb, (height, width), anti_aliasing=True)
    return (small[None] * 2.0 - 1.0).astype(np.float32)


def latent_shape(cfg, batch: int, height: int, width: int) -> tuple[int, ...]:
    """Latent shape of an LQ image already padded to the model's multiple."""
    ae = cfg.autoencoder.params
    f = 2 ** (len(ae.ddconfig.ch_mult) - 1)
    sf = cfg.diffusion.sf
    return (batch, height * sf // f, width * sf // f, ae.embed_dim)


def tiny_fixtures(load_fixture):
    """(sampling fixture, UNet fixture, VQ fixture): the networks the sampling sidecar names."""
    sfx = load_fixture("resshift/sampling_tiny")

    def name(field: str, default: str) -> str:  # 'unet_tiny_realsr.npz (same weights)' -> 'resshift/unet_tiny_realsr'
        return "resshift/" + (sfx.meta.get(field) or default).split()[0].removesuffix(".npz")

    return sfx, load_fixture(name("unet_fixture", "unet_tiny_realsr")), load_fixture(name("vq_fixture", "vq_tiny_f4"))


def tiny_config(load_fixture) -> ml_collections.ConfigDict:
    """A complete sampling config (sections, ``sample`` defaults, I/O fields) of the tiny real-SR model."""
    sfx, ufx, vfx = tiny_fixtures(load_fixture)
    model = ufx.meta["constructor_kwargs"]
    cfg = ml_collections.ConfigDict({
        "name": "tiny_realsr",
        "model": model,
        "diffusion": sfx.meta["diffusion_kwargs"],
        "autoencoder": {"kind": "vq_f4", "dtype": "float32", "params": vfx.meta["constructor_kwargs"]},
        "padding_offset": model["lq_size"],
        "unet_checkpoint": "", "autoencoder_checkpoint": "",
        "input": "", "input_is_measurement": True, "reference": "", "mask": "", "output": "", "overwrite": False,
    })
    cfg.sample = sample_config.sample_section(int(cfg.diffusion.sf))
    return cfg


def with_sample(cfg: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with ``sample`` fields changed."""
    copy = ml_collections.ConfigDict(cfg.to_dict())
    copy.sample.update(changes)
    return copy


def converted_tiny(load_fixture, root: pathlib.Path) -> tuple[ml_collections.ConfigDict, Any, Any]:
    """(cfg, unet_params, vq_params): the tiny model's fixture weights written as ``.pth`` files, converted with
    ``resshift_jax.convert.convert_checkpoint`` into ``root/unet`` and ``root/autoencoder`` (as a user converts
    released weights; ``cfg.unet_checkpoint`` / ``autoencoder_checkpoint`` point there) and read back."""
    _, ufx, vfx = tiny_fixtures(load_fixture)
    cfg = tiny_config(load_fixture)
    convert.convert_checkpoint(write_pth(ufx, root / "unet.pth"), cfg, root / "unet")
    convert.convert_checkpoint(write_pth(vfx, root / "vq.pth"), cfg, root / "autoencoder")
    cfg.unet_checkpoint, cfg.autoencoder_checkpoint = str(root / "unet"), str(root / "autoencoder")
    return cfg, checkpoints.restore_params(root / "unet"), checkpoints.restore_params(root / "autoencoder")


VQ_FIXTURES = ("resshift/vq_tiny_f4", "resshift/vq_tiny_f8")


def inpaint_setup(load_fixture) -> tuple[ml_collections.ConfigDict, Any, Any]:
    """(cfg, unet_params, vq_params): the inpainting config with the tiny inpainting UNet fixture and an
    autoencoder that fits it. With sf 1 the UNet sees the LQ at lq_size / image_size times the latent size,
    so the autoencoder must down-sample by that factor and have ``in_channels`` latent channels: a VQ fixture
    when one fits, else the first VQ fixture's architecture with that many levels and channels, randomly
    initialised (the test is about masking, not about the autoencoder's numbers)."""
    ufx = load_fixture("resshift/unet_tiny_inpaint")
    cfg = load_config_file(REPO / "configs/resshift/inpaint_imagenet.py")
    cfg.model = ufx.meta["constructor_kwargs"]
    cfg.padding_offset = cfg.model.lq_size
    assert cfg.diffusion.sf == 1 and cfg.model.cond_mask
    ratio = cfg.model.lq_size // cfg.model.image_size
    channels = cfg.model.in_channels
    unet_params = convert.convert_part_state_dict(state_dict(ufx), cfg, "unet")
    for name in VQ_FIXTURES:
        vfx = load_fixture(name)
        kwargs = vfx.meta["constructor_kwargs"]
        if 2 ** (len(kwargs["ddconfig"]["ch_mult"]) - 1) == ratio and kwargs["embed_dim"] == channels:
            cfg.autoencoder.params = kwargs
            return cfg, unet_params, convert.convert_part_state_dict(state_dict(vfx), cfg, "autoencoder")
    kwargs = dict(load_fixture(VQ_FIXTURES[0]).meta["constructor_kwargs"])
    dd = dict(kwargs["ddconfig"])
    levels = int(np.log2(ratio)) + 1
    mults = list(dd["ch_mult"])[:levels]
    dd["ch_mult"] = mults + [mults[-1]] * (levels - len(mults))
    if not isinstance(dd["num_res_blocks"], int):
        dd["num_res_blocks"] = 1
    dd["attn_resolutions"] = []
    kwargs.update(ddconfig=dd, embed_dim=channels)
    cfg.autoencoder.params = kwargs
    return cfg, unet_params, vq.init_params(cfg.autoencoder, jax.random.key(0))
