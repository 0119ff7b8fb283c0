"""DeqIR's CelebA-HQ diffusion model: the DDIM-style ``Model`` with the SDEdit ``celeba_hq.ckpt`` weights.

Values are those of the official ``configs/celeba_hq.yml`` (model section, image size 256). The checkpoint
predicts eps with 3 output channels (fixed-small variance, no learned sigma) and runs in float32.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint_name = "celeba_hq.ckpt"
    cfg.model = ml_collections.ConfigDict(
        dict(
            arch="ddpm",
            type="simple",
            image_size=256,
            in_channels=3,
            out_ch=3,
            ch=128,
            ch_mult=(1, 1, 2, 2, 4, 4),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.0,
            resamp_with_conv=True,
            dtype="float32",
        )
    )
    return cfg
