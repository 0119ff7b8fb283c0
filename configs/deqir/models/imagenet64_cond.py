"""ImageNet 64x64 class-conditional guided-diffusion model (the only release with the new QKV attention order).

Checkpoint ``64x64_diffusion.pt`` from openai/guided-diffusion. Model flags of its README:

    --attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1
    --image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192
    --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_new_attention_order True
    --use_fp16 True --use_scale_shift_norm True

``channel_mult=''`` takes guided-diffusion's default for the image size; ``attention_resolutions`` are pixel
sizes (converted to downsample rates by the model builder); unset flags are ``model_and_diffusion_defaults()``
values. ``dtype='float16'`` mirrors the released ``--use_fp16 True``; ``'bfloat16'`` is the usual choice on TPU.
"""
import ml_collections

from deqir_jax.models.adm_config import guided_diffusion_model_config


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = '64x64_diffusion.pt'
    # README flags; everything else is guided-diffusion's model_and_diffusion_defaults().
    cfg.model = guided_diffusion_model_config(
        attention_resolutions='32,16,8',
        class_cond=True,
        dropout=0.1,
        dtype='float16',
        learn_sigma=True,
        num_channels=192,
        num_head_channels=64,
        num_res_blocks=3,
        resblock_updown=True,
        use_new_attention_order=True,
    )
    return cfg
