"""Super-resolution x4 with the official bicubic SRConv operator.

``--config configs/deqir/sr_bicubic_x4.py`` (ImageNet prior) or ``--config configs/deqir/sr_bicubic_x4.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "sr_bicubic"
    cfg.degradation.params = ml_collections.ConfigDict({'factor': 4})
    return cfg
