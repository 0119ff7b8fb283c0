"""The ``sample`` section of a ResShift config, as data (imports nothing but ml_collections).

``configs/resshift/base.py`` builds it here; :mod:`resshift_jax.pipeline` reads and checks it. This is the one place
the sampler defaults (tiling included) are set.
"""
from __future__ import annotations

import ml_collections


def default_tiling(sf: int) -> tuple[int, int]:
    """Official chop defaults in LQ pixels: (512 * (4 // sf), 64 * (4 // sf)) -> (512, 64) at x4, (2048, 256) at x1."""
    factor = max(4 // int(sf), 1)
    return 512 * factor, 64 * factor


def sample_section(sf: int) -> ml_collections.ConfigDict:
    """The ``sample`` config section with its defaults for scale factor ``sf`` (the one place they are set).

    ``seed`` (12345, as the official script), ``tile_size`` / ``tile_overlap`` (LQ pixels, :func:`default_tiling`),
    ``batch_size`` (tiles per network call), ``tile_weighting`` (``uniform`` = official averaging, or
    ``gaussian``), ``mask_lq`` (set the unknown area of the LQ to -1), ``mask_back`` (paste known pixels back),
    ``dtype`` (UNet compute dtype: float32 / bfloat16 / float16; parameters stay float32).
    """
    tile_size, tile_overlap = default_tiling(sf)
    return ml_collections.ConfigDict({
        "seed": 12345, "tile_size": tile_size, "tile_overlap": tile_overlap, "batch_size": 1,
        "tile_weighting": "uniform", "mask_lq": True, "mask_back": True, "dtype": "float32",
    })
