"""ImageNet 256x256 unconditional guided-diffusion model: the prior DeqIR and DDNM use for ImageNet.

Checkpoint ``256x256_diffusion_uncond.pt`` from openai/guided-diffusion. Model flags of its README:

    --attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256
    --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
    --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True

``channel_mult=''`` takes guided-diffusion's default for the image size; ``attention_resolutions`` are pixel
sizes (converted to downsample rates by the model builder); unset flags are ``model_and_diffusion_defaults()``
values. ``dtype='float16'`` mirrors the released ``--use_fp16 True``; ``'bfloat16'`` is the usual choice on TPU.

Parameters: 552,814,086.
"""
import ml_collections

from deqir_jax.models.adm_config import guided_diffusion_model_config


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = '256x256_diffusion_uncond.pt'
    # README flags; everything else is guided-diffusion's model_and_diffusion_defaults().
    cfg.model = guided_diffusion_model_config(
        attention_resolutions='32,16,8',
        dtype='float16',
        image_size=256,
        learn_sigma=True,
        num_channels=256,
        num_head_channels=64,
        resblock_updown=True,
    )
    return cfg
