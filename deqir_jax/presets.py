"""A DeqIR restoration preset (``configs/deqir/<task>.py``, an ``ml_collections.ConfigDict``) -> the objects it
describes: the chain settings, the x_T optimisation settings, the degradation operator and the prior weights.

Config keys are the field names of the objects they fill (``cfg.solver`` = :class:`SolverSettings`), so each
setting reaches its object in one change of form.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np

from deqir_jax import init_opt, masks, models, solver_settings
from deqir_jax import operators as ops
from deqir_jax.restore import SAMPLERS, ChainSettings
from deqir_jax.schedule import NUM_DIFFUSION_TIMESTEPS
from ircore import checkpoints

DEFAULT_MASK = "stripes"  # the inpainting mask when the preset names none
RESIZE_MODES = ("center_crop", "none")


def _number(cfg: ml_collections.ConfigDict, key: str) -> float:
    """``cfg[key]`` as a float (ValueError naming the flag when it is not a number)."""
    try:
        return float(cfg[key])
    except (TypeError, ValueError):
        raise ValueError(f"--config.{key} must be a number, got {cfg[key]!r}") from None


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """ValueError (one line naming the ``--config.<field>`` flag and its valid range) for a preset value out of
    range: ``sigma_y``, ``timesteps``, ``nw``, ``etw``, ``image_size``, ``resize``, ``sampler``, the ``solver`` and
    ``init_opt`` settings. Nothing is clipped: a bad value is refused."""
    sigma_y = _number(cfg, "sigma_y")
    if not (math.isfinite(sigma_y) and sigma_y >= 0.0):
        raise ValueError(f"--config.sigma_y must be a finite noise level >= 0, got {cfg.sigma_y}")
    timesteps = cfg.timesteps
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or not 1 <= timesteps <= NUM_DIFFUSION_TIMESTEPS:
        raise ValueError(f"--config.timesteps must be an integer from 1 to {NUM_DIFFUSION_TIMESTEPS}, got {timesteps!r}")
    for key in ("nw", "etw"):
        value = _number(cfg, key)
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"--config.{key} must be a finite weight >= 0, got {cfg[key]}")
    size = cfg.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"--config.image_size must be a positive integer, got {size!r}")
    if cfg.resize not in RESIZE_MODES:
        raise ValueError(f"--config.resize must be one of {', '.join(RESIZE_MODES)}, got {cfg.resize!r}")
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"--config.sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
    steps = cfg.init_opt.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"--config.init_opt.steps must be an integer >= 0 (0 = off), got {steps!r}")
    readers = {"solver": lambda: solver_settings.from_config(cfg.solver)}
    if steps > 0:
        readers["init_opt"] = lambda: init_opt_from_config(cfg)
    for key, read in readers.items():
        try:
            read()
        except (TypeError, ValueError) as err:
            raise ValueError(f"--config.{key}: {' '.join(str(err).split())}") from None


def chain_settings_from_config(cfg: ml_collections.ConfigDict) -> ChainSettings:
    """The static chain and solver settings of a preset (``timesteps``, ``nw``, ``etw``, ``sampler``, ``solver``),
    after :func:`check_config`."""
    check_config(cfg)
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
    """The prior's parameter tree from ``cfg.checkpoint`` (an orbax folder made by ``deqir_jax.convert``), checked
    against the preset's model: a checkpoint of another network (a ResShift one, another DeqIR prior) or a
    folder that is no checkpoint is a one-line ValueError / FileNotFoundError."""
    if not cfg.checkpoint:
        raise ValueError("no prior checkpoint given: set --config.checkpoint=DIR (made by deqir_jax.convert)")
    hint = "give --config.checkpoint=DIR made by deqir_jax.convert"
    try:
        params = checkpoints.restore_params(cfg.checkpoint)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{' '.join(str(err).split())}; {hint}") from None
    except ValueError as err:
        raise ValueError(f"{' '.join(str(err).split())}; {hint}") from None
    problem = params_mismatch(params, models.architecture(cfg.model).param_shapes(cfg.model))
    if problem:
        raise ValueError(f"checkpoint {cfg.checkpoint} does not fit the preset's model (arch "
                         f"{models.arch_name(cfg.model)!r}): {problem}; {hint} for this model (not another package's or "
                         f"network's weights)")
    return params


def params_mismatch(params: Any, expected: Any) -> str:
    """'' when ``params`` has the parameter names and shapes of ``expected``, else a short description of the
    first difference (and how many there are)."""
    def flat(tree: Any) -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}

    got, want = flat(params), flat(expected)
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if not (missing or unexpected or shapes):
        return ""
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameter(s) missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: {got[k]} instead of {want[k]})")
    return ", ".join(parts)
