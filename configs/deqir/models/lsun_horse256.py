"""LSUN horse 256x256 unconditional guided-diffusion model, checkpoint ``lsun_horse.pt``.

Same network and flags as ``lsun_bedroom256.py`` (openai/guided-diffusion README).
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config() -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "lsun_bedroom256.py")
    cfg.checkpoint_name = "lsun_horse.pt"
    return cfg
