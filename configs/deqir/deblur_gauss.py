"""Gaussian deblurring (official: 5 taps, sigma 10; Table 1).

``--config configs/deqir/deblur_gauss.py`` (ImageNet prior) or ``--config configs/deqir/deblur_gauss.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "deblur_gauss"
    cfg.degradation.params = ml_collections.ConfigDict({})
    return cfg
