"""Walsh-Hadamard compressed sensing, ratio 2.

``--config configs/deqir/cs_walshhadamard.py`` (ImageNet prior) or ``--config configs/deqir/cs_walshhadamard.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "cs_walshhadamard"
    cfg.degradation.params = ml_collections.ConfigDict({'ratio': 2})
    return cfg
