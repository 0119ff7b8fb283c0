"""VQ-f4 autoencoder of ResShift (``VQModelTorch``; CompVis latent-diffusion VQ-f4), released settings.

Official ``autoencoder`` section of ``configs/realsr_swinunet_realesrgan256*.yaml``, ``bicx4_swinunet_lpips``,
``realsr_realesrgan256_x2``, ``inpaint_lama256_imagenet`` and (other weights, same architecture)
``inpaint_lama256_face``. 55,322,782 parameters; a 256x256 image becomes a 64x64x3 latent.

``get_config()`` / ``get_config("imagenet")``: ``autoencoder_vq_f4.pth``;
``get_config("face")``: ``celeba256_vq_f4_dim3_face.pth`` (face inpainting).
Build with ``resshift_jax.models.vq.model_from_config(cfg)``.
"""
import ml_collections

_RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"
_CHECKPOINTS = {"imagenet": "autoencoder_vq_f4.pth", "face": "celeba256_vq_f4_dim3_face.pth"}


def get_config(weights: str = "imagenet") -> ml_collections.ConfigDict:
    if weights not in _CHECKPOINTS:
        raise ValueError(f"unknown VQ-f4 weights {weights!r}; expected one of {sorted(_CHECKPOINTS)}")
    cfg = ml_collections.ConfigDict()
    cfg.kind = "vq_f4"
    cfg.checkpoint_name = _CHECKPOINTS[weights]
    cfg.checkpoint_url = _RELEASE + cfg.checkpoint_name
    cfg.dtype = "float32"  # compute dtype; parameters stay float32
    cfg.params = ml_collections.ConfigDict({
        "embed_dim": 3,
        "n_embed": 8192,
        "ddconfig": {
            "double_z": False,
            "z_channels": 3,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 128,
            "ch_mult": (1, 2, 4),
            "num_res_blocks": 2,
            "attn_resolutions": (),
            "dropout": 0.0,
        },
    })
    return cfg
