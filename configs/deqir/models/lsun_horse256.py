"""LSUN horse 256x256 unconditional guided-diffusion model (same network as imagenet256_uncond).

Checkpoint ``lsun_horse.pt`` from openai/guided-diffusion. Model flags of its README:

    --attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1
    --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256
    --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True
    --use_scale_shift_norm True

``channel_mult=''`` takes guided-diffusion's default for the image size; ``attention_resolutions`` are pixel
sizes (converted to downsample rates by the model builder); unset flags are ``model_and_diffusion_defaults()``
values. ``dtype='float16'`` mirrors the released ``--use_fp16 True``; ``'bfloat16'`` is the usual choice on TPU.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = "lsun_horse.pt"
    cfg.model = ml_collections.ConfigDict(
        dict(
            arch="adm",
            image_size=256,
            num_channels=256,
            num_res_blocks=2,
            channel_mult="",
            attention_resolutions="32,16,8",
            num_heads=4,
            num_head_channels=64,
            num_heads_upsample=-1,
            use_scale_shift_norm=True,
            resblock_updown=True,
            learn_sigma=True,
            class_cond=False,
            dropout=0.1,
            use_new_attention_order=False,
            dtype="float16",
        )
    )
    return cfg
