"""A DeqIR restoration preset (``configs/deqir/<task>.py``, an ``ml_collections.ConfigDict``) -> the objects it
describes: the chain settings, the x_T optimisation settings, the degradation operator and the prior weights.

Config keys are the field names of the objects they fill (``cfg.solver`` = :class:`SolverSettings`), so each
setting reaches its object in one change of form.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from deqir_jax import init_opt, masks, solver_settings
from deqir_jax import operators as ops
from deqir_jax.restore import ChainSettings
from ircore import checkpoints

DEFAULT_MASK = "stripes"  # the inpainting mask when the preset names none


def chain_settings_from_config(cfg: ml_collections.ConfigDict) -> ChainSettings:
    """The static chain and solver settings of a preset (``timesteps``, ``nw``, ``etw``, ``sampler``, ``solver``)."""
    return ChainSettings(
        timesteps=int(cfg.timesteps), nw=float(cfg.nw), etw=float(cfg.etw), sampler=cfg.sampler,
        solver=solver_settings.from_config(cfg.solver),
    )


def init_opt_from_config(cfg: ml_collections.ConfigDict) -> init_opt.InitOptConfig:
    """x_T optimisation settings of a preset (``cfg.init_opt``; official Adam lr 2e-5)."""
    c = cfg.init_opt
    return init_opt.InitOptConfig(
        gradient=c.gradient, lr=float(c.learning_rate), n_epochs=int(c.steps), early_stop=float(c.early_stop),
        solver=solver_settings.from_config(c.solver),
    )


def build_operator(cfg: ml_collections.ConfigDict, size: tuple[int, int]) -> ops.LinearOperator:
    """The degradation operator of ``cfg.degradation`` for images of ``size`` (H, W).

    What a builder draws at random comes from the run's ``cfg.seed`` unless the preset gives it: a builder
    taking a ``mask`` gets the generated (or read) mask ``cfg.degradation.mask`` (default stripes), one taking
    a ``seed`` (the compressed-sensing permutation) gets ``cfg.seed``.
    """
    params = dict(cfg.degradation.params.to_dict()) if cfg.degradation.params else {}
    name = cfg.degradation.name
    takes = ops.builder_parameters(name)
    if "mask" in takes and "mask" not in params:
        params["mask"] = masks.make_mask(cfg.degradation.mask or DEFAULT_MASK, size, seed=int(cfg.seed))
    if "seed" in takes:
        params.setdefault("seed", int(cfg.seed))
    return ops.make_operator(name, size, **params)


def load_params(cfg: ml_collections.ConfigDict) -> Any:
    """The prior's parameter tree from ``cfg.checkpoint`` (an orbax folder made by ``deqir_jax.convert``)."""
    if not cfg.checkpoint:
        raise ValueError("no prior checkpoint given: set --config.checkpoint=DIR (made by deqir_jax.convert)")
    return checkpoints.restore_params(cfg.checkpoint)
