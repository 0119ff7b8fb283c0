"""ImageNet 512x512 class-conditional guided-diffusion model (channel_mult 0.5,1,1,2,2,4,4; released for fp32).

Checkpoint ``512x512_diffusion.pt`` from openai/guided-diffusion. Model flags of its README:

    --attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512
    --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
    --num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True

``channel_mult=''`` takes guided-diffusion's default for the image size; ``attention_resolutions`` are pixel
sizes (converted to downsample rates by the model builder); unset flags are ``model_and_diffusion_defaults()``
values. Released for float32 inference (``--use_fp16 False``).
"""
import ml_collections

from deqir_jax.models.adm_config import guided_diffusion_model_config


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = '512x512_diffusion.pt'
    # README flags; everything else is guided-diffusion's model_and_diffusion_defaults().
    cfg.model = guided_diffusion_model_config(
        attention_resolutions='32,16,8',
        class_cond=True,
        image_size=512,
        learn_sigma=True,
        num_channels=256,
        num_head_channels=64,
        resblock_updown=True,
    )
    return cfg
