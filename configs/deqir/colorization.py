"""Colorization (Table 3).

``--config configs/deqir/colorization.py`` (ImageNet prior) or ``--config configs/deqir/colorization.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "colorization"
    cfg.degradation.params = ml_collections.ConfigDict({})
    return cfg
