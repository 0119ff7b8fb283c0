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


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = "64x64_diffusion.pt"
    cfg.model = ml_collections.ConfigDict(
        dict(
            arch="adm",
            image_size=64,
            num_channels=192,
            num_res_blocks=3,
            channel_mult="",
            attention_resolutions="32,16,8",
            num_heads=4,
            num_head_channels=64,
            num_heads_upsample=-1,
            use_scale_shift_norm=True,
            resblock_updown=True,
            learn_sigma=True,
            class_cond=True,
            dropout=0.1,
            use_new_attention_order=True,
            dtype="float16",
        )
    )
    return cfg
