"""Anisotropic deblurring (official: 9 taps, sigma 1 vertical / 20 horizontal; Table 1).

``--config configs/deqir/deblur_aniso.py`` (ImageNet prior) or ``--config configs/deqir/deblur_aniso.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "deblur_aniso"
    cfg.degradation.params = ml_collections.ConfigDict({})
    return cfg
