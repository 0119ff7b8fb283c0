r"""Training a DeqIR prior: the DDPM epsilon objective on top of :mod:`ircore.trainer`, and the command line.

    python -m deqir_jax.train --config configs/deqir/embedded_prior.py --workdir runs/deqir_prior \
        [--export deqir_jax/embedded/prior] [--config.x=y ...]

DeqIR restores with a pretrained *unconditional* diffusion prior; this trains one (the guided-diffusion
``UNetModel`` or the DDIM-style ``Model``, chosen by ``config.model.arch``) with the standard DDPM loss
("L_simple", Ho et al. 2020), per batch of clean crops ``x_0`` in [-1, 1]:

    t ~ U{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
    loss = mean over pixels and batch of || eps - eps_theta(x_t, t) ||^2

with the same beta schedule the samplers use (``config.diffusion``: linear 1e-4 .. 2e-2 over 1000 steps,
:mod:`deqir_jax.schedule`). Models with ``learn_sigma`` (a variance head trained by guided-diffusion's hybrid
VLB loss) are refused: DeqIR's DDIM + DDNM chain reads only the epsilon half.

Everything else (the ``data`` x ``fsdp`` mesh, AdamW with warm-up + cosine decay, EMA, gradient accumulation,
orbax checkpoints with exact resume and SIGTERM saves) is :class:`ircore.trainer.Trainer`; the crops come from
:mod:`ircore.data` (image folders, TFDS, or the package photographs of :mod:`ircore.photos`). ``--export``
writes the EMA parameters at the end as a parameter checkpoint that ``python -m deqir_jax.sample`` loads
(``--config.checkpoint=DIR``).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

from deqir_jax import models, schedule
from ircore import data, train_cli, trainer


# The config sections a resumed run must share with its workdir (the checkpoint's weights belong to them);
# every other section (train, data, loss, ...) may change on resume (ircore.train_cli.check_network).
NETWORK_SECTIONS = ("model", "diffusion")


class TrainSetupError(trainer.TrainSetupError):
    """A user-facing configuration problem (unsupported model head, bad schedule, ...)."""


def abar_from_config(cfg: Any) -> jax.Array:
    """abar_t for t = 0 .. T-1, (T,) float32, from ``cfg.diffusion``."""
    d = cfg.diffusion
    if int(d.num_steps) != schedule.NUM_DIFFUSION_TIMESTEPS:
        raise TrainSetupError(f"diffusion.num_steps must be {schedule.NUM_DIFFUSION_TIMESTEPS} (the samplers' "
                              f"chain is defined on that grid), got {d.num_steps}")
    betas = schedule.linear_betas(float(d.beta_start), float(d.beta_end), int(d.num_steps))
    return jnp.asarray(schedule.alphas_cumprod(betas))


def _check_model(cfg: Any) -> None:
    if cfg.model.get("learn_sigma", False):
        raise TrainSetupError("model.learn_sigma=True needs guided-diffusion's hybrid VLB loss; this trainer fits "
                              "the epsilon objective only: set --config.model.learn_sigma=False")
    if cfg.model.get("class_cond", False):
        raise TrainSetupError("DeqIR priors are unconditional: set --config.model.class_cond=False")


def q_sample(abar: jax.Array, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for x0, noise (B, H, W, C) and t (B,) int."""
    a = abar[t][:, None, None, None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def epsilon_loss(eps_fn: Callable[[jax.Array, jax.Array], jax.Array], abar: jax.Array, x0: jax.Array,
                 key: jax.Array) -> jax.Array:
    """Per-sample DDPM loss (B,): mean over pixels of (eps - eps_fn(x_t, t))^2, t and eps drawn from ``key``."""
    if x0.ndim != 4:
        raise ValueError(f"x0 must be NHWC, got shape {x0.shape}")
    k_t, k_eps = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, abar.shape[0])
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    pred = eps_fn(q_sample(abar, x0, t, eps), t)
    if pred.shape != x0.shape:
        raise ValueError(f"the model returns {pred.shape}, expected epsilon of shape {x0.shape}")
    return jnp.mean((eps - pred.astype(jnp.float32)) ** 2, axis=(1, 2, 3))


def make_loss_fn(cfg: Any) -> trainer.LossFn:
    """``(params, frozen, batch, key) -> (loss, {"mse"})`` for one micro-batch ``{"hq": uint8}``."""
    _check_model(cfg)
    model = models.model_from_config(cfg.model)
    abar = abar_from_config(cfg)
    dropout = float(cfg.model.get("dropout", 0.0)) > 0

    def loss_fn(params, frozen, batch, key):  # noqa: ARG001 (no frozen networks)
        x0 = data.hq_to_float(batch["hq"])
        k_loss, k_drop = jax.random.split(key)

        def eps_fn(x, t):
            if dropout:
                return model.apply({"params": params}, x, t, train=True, rngs={"dropout": k_drop})
            return model.apply({"params": params}, x, t)

        mse = jnp.mean(epsilon_loss(eps_fn, abar, x0, k_loss))
        return mse, {"mse": mse}

    return loss_fn


def init_params_fn(cfg: Any) -> Callable[[jax.Array], Any]:
    """``key -> params``: a random initialisation of ``cfg.model`` at its ``image_size``."""
    model = models.model_from_config(cfg.model)
    size, channels = int(cfg.model.image_size), int(cfg.model.get("in_channels", 3))

    def init(key):
        x = jnp.zeros((1, size, size, channels), jnp.float32)
        return model.init(key, x, jnp.zeros((1,), jnp.int32))["params"]

    return init


def build_trainer(cfg: Any, workdir: str | os.PathLike, *, print_fn: Any = print) -> trainer.Trainer:
    """The :class:`ircore.trainer.Trainer` of a prior-training config (``model``, ``diffusion``, ``train``,
    ``data``)."""
    if int(cfg.data.crop_size) % 8:
        raise TrainSetupError(f"data.crop_size {cfg.data.crop_size} must be a multiple of 8")
    return trainer.Trainer(
        cfg.train, workdir,
        init_params=init_params_fn(cfg),
        loss_fn=make_loss_fn(cfg),
        metadata={"config": json.loads(cfg.to_json_best_effort())},
        print_fn=print_fn,
    )


def train(cfg: Any, workdir: str | os.PathLike, *, export: str | None = None, overwrite: bool = False,
          print_fn: Any = print) -> trainer.TrainState:
    """Trains (resuming from ``workdir`` if it holds checkpoints); with ``export``, writes the EMA parameters
    there as a parameter checkpoint (metadata: the model config, the step, the data source)."""
    workdir = pathlib.Path(workdir)
    train_cli.check_run(cfg, workdir, export=export, overwrite=overwrite, network=NETWORK_SECTIONS)
    source = data.open_training_source(cfg.data)
    tr = build_trainer(cfg, workdir, print_fn=print_fn)
    meta = {"kind": "deqir_prior", "model": cfg.model.to_dict(), "diffusion": cfg.diffusion.to_dict()}
    return train_cli.fit_task(tr, cfg, workdir, export=export, overwrite=overwrite, export_metadata=meta,
                              print_fn=print_fn, source=source)


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    train_cli.train_cli(train, config_help="prior training config (configs/deqir/*.py)",
                        errors=(TrainSetupError, FileExistsError), argv=argv)


if __name__ == "__main__":
    main()
