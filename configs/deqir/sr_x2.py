"""Super-resolution x2 by average pooling (Table 1, 2xSR).

``--config configs/deqir/sr_x2.py`` (ImageNet prior) or ``--config configs/deqir/sr_x2.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "sr_averagepooling"
    cfg.degradation.params = ml_collections.ConfigDict({'factor': 2})
    return cfg
