"""``deqir_jax.presets``: a restoration preset -> chain settings, x_T optimisation settings, operator, weights."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest

from deqir_jax import init_opt, masks, presets, solver_settings
from deqir_jax import operators as ops
from deqir_jax.solver_settings import DEFAULT, SolverSettings
from ircore.config_utils import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "deqir"
PRESETS = sorted(p for p in CONFIGS.glob("*.py") if p.name not in ("base.py", "embedded_prior.py"))


def test_presets_hold_the_library_defaults():
    """One default everywhere: every preset's solver and x_T-optimisation settings are the library's."""
    for preset in PRESETS:
        cfg = load_config_file(preset, "embedded")
        assert sorted(cfg.solver.keys()) == sorted(f.name for f in dataclasses.fields(SolverSettings))
        assert presets.chain_settings_from_config(cfg).solver == DEFAULT, preset.name
        cfg.init_opt.steps = 1  # (0 = off: no InitOptConfig is built)
        opt = presets.init_opt_from_config(cfg)
        assert opt.solver == solver_settings.OFFICIAL_INVERSION
        assert opt.gradient == init_opt.InitOptConfig().gradient


def test_256_priors_bound_the_rows_per_prior_call():
    """The 256x256 presets run at most 13 chain rows per prior call (T = 100 fits a 16 GB device); the rest of
    the solver is the library default."""
    for dataset in ("imagenet", "celeba"):
        solver = presets.chain_settings_from_config(load_config_file(CONFIGS / "sr_x4.py", dataset)).solver
        assert solver == dataclasses.replace(DEFAULT, chunk_size=13), dataset


def test_chain_settings_read_every_chain_field():
    cfg = load_config_file(CONFIGS / "sr_x4.py", "embedded")
    cfg.timesteps, cfg.nw, cfg.etw, cfg.sampler, cfg.solver.m = 7, 0.5, 0.2, "sequential", 4
    settings = presets.chain_settings_from_config(cfg)
    assert (settings.timesteps, settings.nw, settings.etw, settings.sampler) == (7, 0.5, 0.2, "sequential")
    assert settings.solver == dataclasses.replace(DEFAULT, m=4)


def test_every_preset_builds_its_operator():
    for preset in PRESETS:
        cfg = load_config_file(preset, "embedded")
        size = int(cfg.image_size)
        op = presets.build_operator(cfg, (size, size))
        assert op.image_shape == (size, size, 3) and op.name == cfg.degradation.name, preset.name


def test_random_operator_parts_come_from_the_run_seed():
    """The generated inpainting mask and the CS permutation are drawn from cfg.seed unless the preset gives them."""
    cfg = load_config_file(CONFIGS / "inpainting.py", "embedded")
    size = int(cfg.image_size)
    cfg.degradation.mask = "random"
    op = presets.build_operator(cfg, (size, size))
    np.testing.assert_array_equal(np.asarray(op.mask)[..., 0], masks.make_mask("random", (size, size), seed=cfg.seed))
    cfg.degradation.mask = ""
    np.testing.assert_array_equal(np.asarray(presets.build_operator(cfg, (size, size)).mask)[..., 0],
                                  masks.make_mask(presets.DEFAULT_MASK, (size, size)))
    cfg = load_config_file(CONFIGS / "cs_walshhadamard.py", "embedded")
    want = ops.make_operator("cs_walshhadamard", size, ratio=cfg.degradation.params.ratio, seed=cfg.seed)
    np.testing.assert_array_equal(np.asarray(presets.build_operator(cfg, (size, size)).perm), np.asarray(want.perm))
    cfg.degradation.params.seed = cfg.seed + 1
    other = presets.build_operator(cfg, (size, size))
    assert not np.array_equal(np.asarray(other.perm), np.asarray(want.perm))


def test_preset_mistakes_are_one_line_errors():
    cfg = load_config_file(CONFIGS / "sr_x4.py", "embedded")
    cfg.degradation.name = "sr_magic"
    with pytest.raises(ValueError, match="unknown degradation 'sr_magic'"):
        presets.build_operator(cfg, (64, 64))
    cfg = load_config_file(CONFIGS / "sr_x4.py", "imagenet")
    with pytest.raises(ValueError, match="no prior checkpoint given"):
        presets.load_params(cfg)
