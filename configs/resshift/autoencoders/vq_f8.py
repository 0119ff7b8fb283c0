"""VQ-f8 face autoencoder of ResShift (``VQModelTorch``, ``ffhq512_vq_f8_dim8_face.pth``), released settings.

Official ``autoencoder`` section of ``configs/faceir_gfpgan512_lpips.yaml`` (blind face restoration).
77,009,115 parameters; a 512x512 image becomes a 64x64x8 latent. Build with
``resshift_jax.models.vq.model_from_config(cfg)``.
"""
import ml_collections

_RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.kind = "vq_f8"
    cfg.checkpoint_name = "ffhq512_vq_f8_dim8_face.pth"
    cfg.checkpoint_url = _RELEASE + cfg.checkpoint_name
    cfg.dtype = "float32"  # compute dtype; parameters stay float32
    cfg.params = ml_collections.ConfigDict({
        "embed_dim": 8,
        "n_embed": 4096,
        "ddconfig": {
            "double_z": False,
            "z_channels": 8,
            "resolution": 512,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 64,
            "ch_mult": (1, 2, 4, 8),
            "num_res_blocks": (1, 2, 3, 4),
            "attn_resolutions": (),
            "dropout": 0.0,
        },
    })
    return cfg
