"""The embedded default prior of this project (not a released model): a small guided-diffusion ``UNetModel``.

Trained with ``configs/deqir/embedded_prior.py`` (DDPM epsilon loss, linear betas 1e-4 .. 2e-2 over 1000
steps) on 32x32 multi-scale crops of the training photographs of ``ircore.photos``; the weights ship in
``deqir_jax/embedded/prior``. The network is convolutional with self-attention at downsample rate 4
(``attention_resolutions`` 8 at the construction size 32), so it restores 64x64 images (16x16 attention).
"""
import ml_collections

from deqir_jax.models.adm_config import guided_diffusion_model_config


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = "deqir_jax/embedded/prior"
    cfg.model = guided_diffusion_model_config(
        image_size=32,
        num_channels=32,
        channel_mult="1,2,2",
        num_res_blocks=2,
        attention_resolutions="8",
        num_head_channels=32,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=False,
    )
    return cfg
