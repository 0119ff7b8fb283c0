"""Inpainting with a mask (Table 2; the paper uses text and stripe masks on CelebA-HQ).

``--config configs/deqir/inpainting.py`` (ImageNet prior) or ``--config configs/deqir/inpainting.py:celeba``.
"""
import pathlib

import ml_collections

from ircore.config_utils import load_config_file


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    cfg = load_config_file(pathlib.Path(__file__).parent / "base.py", dataset)
    cfg.degradation.name = "inpainting"
    cfg.degradation.params = ml_collections.ConfigDict({})
    cfg.degradation.mask = 'stripes'
    return cfg
