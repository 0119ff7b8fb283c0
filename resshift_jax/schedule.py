"""The ResShift eta schedule and every array derived from it.

All arrays are computed once in float64 NumPy (as the official code does) and stored in a frozen
:class:`Schedule` pytree. Jitted functions take the ``Schedule`` as an ordinary argument: the arrays become
device arrays (float32 unless x64 is enabled, the same cast the official ``_extract_into_tensor`` makes),
the scalar settings (``kappa``, ``predict_type``, ...) stay static.

Index convention: ``t = 0..T-1`` in code is step ``t+1`` of the paper.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from flax import struct

PREDICT_TYPES = ("xstart", "epsilon", "epsilon_scale", "residual")


def exponential_sqrt_etas(
    steps: int, min_noise_level: float, etas_end: float = 0.99, kappa: float = 1.0, power: float = 0.3
) -> np.ndarray:
    """sqrt(eta_t), t=0..steps-1, of the 'exponential' schedule; float64 array of shape (steps,).

    sqrt_eta_1 = min(min_noise_level / kappa, min_noise_level), sqrt_eta_T = etas_end and
    sqrt_eta_t = sqrt_eta_1 * (etas_end / sqrt_eta_1) ** (((t-1)/(T-1)) ** power).
    """
    if int(steps) != steps or steps < 2:
        raise ValueError(f"exponential schedule needs an integer steps >= 2, got {steps!r}")
    if min_noise_level <= 0 or kappa <= 0 or etas_end <= 0:
        raise ValueError(
            f"min_noise_level, kappa and etas_end must be > 0, got {min_noise_level}, {kappa}, {etas_end}"
        )
    steps = int(steps)
    start = min(min_noise_level / kappa, min_noise_level)
    # Same order of operations as the official code, so that results agree to the last bits.
    growth = math.exp(1.0 / (steps - 1) * math.log(etas_end / start))
    exponent = np.linspace(0.0, 1.0, steps, endpoint=True) ** power * (steps - 1)
    return np.power(np.full((steps,), growth), exponent) * start


def space_timesteps(num_timesteps: int, sample_timesteps: int) -> list[int]:
    """Indices kept when respacing ``num_timesteps`` to ``sample_timesteps``: int(T/K * x), x=0..K-1 (sorted).

    Note that index T-1 is usually dropped (e.g. 15 -> 5 keeps [0, 3, 6, 9, 12]), as in the official code.
    """
    if not (1 <= sample_timesteps <= num_timesteps):
        raise ValueError(
            f"timestep_respacing must lie in [1, {num_timesteps}], got {sample_timesteps}"
        )
    return sorted({int((num_timesteps / sample_timesteps) * x) for x in range(sample_timesteps)})


@struct.dataclass
class Schedule:
    """Frozen pytree of float64 schedule arrays (shape (T,)) plus static settings.

    ``timestep_map[t]`` is the index the network receives for schedule index ``t`` (identity without
    respacing). ``input_divisor`` is what :func:`resshift_jax.diffusion.scale_input` divides by (depends on
    ``normalize_input`` / ``latent_flag``); ``input_scale_std`` is always the latent divisor
    sqrt(kappa^2 eta_t + 1).
    """

    sqrt_etas: np.ndarray
    etas: np.ndarray
    etas_prev: np.ndarray
    alpha: np.ndarray
    kappa_sqrt_etas: np.ndarray
    posterior_variance: np.ndarray
    posterior_variance_clipped: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    weight_loss_mse: np.ndarray
    input_scale_std: np.ndarray
    input_divisor: np.ndarray
    timestep_map: np.ndarray
    prior_std: np.ndarray
    kappa: float = struct.field(pytree_node=False, default=2.0)
    predict_type: str = struct.field(pytree_node=False, default="xstart")
    normalize_input: bool = struct.field(pytree_node=False, default=True)
    latent_flag: bool = struct.field(pytree_node=False, default=True)
    scale_factor: float = struct.field(pytree_node=False, default=1.0)
    sf: int = struct.field(pytree_node=False, default=4)
    weighted_mse: bool = struct.field(pytree_node=False, default=False)

    @property
    def num_timesteps(self) -> int:
        return int(np.shape(self.sqrt_etas)[0])

    @classmethod
    def from_sqrt_etas(
        cls,
        sqrt_etas: Sequence[float] | np.ndarray,
        *,
        kappa: float,
        timestep_map: Sequence[int] | np.ndarray | None = None,
        predict_type: str = "xstart",
        normalize_input: bool = True,
        latent_flag: bool = True,
        scale_factor: float | None = 1.0,
        sf: int = 4,
        weighted_mse: bool = False,
    ) -> "Schedule":
        """Derives every array from a 1-D sqrt(eta) sequence (float64), like ``GaussianDiffusion.__init__``."""
        sqrt_etas = np.asarray(sqrt_etas, dtype=np.float64)
        if sqrt_etas.ndim != 1 or sqrt_etas.shape[0] < 2:
            raise ValueError(f"sqrt_etas must be 1-D with at least 2 entries, got shape {sqrt_etas.shape}")
        if predict_type not in PREDICT_TYPES:
            raise ValueError(f"predict_type must be one of {PREDICT_TYPES}, got {predict_type!r}")
        if kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {kappa}")
        etas = sqrt_etas**2
        if not (np.all(etas > 0) and np.all(etas <= 1)):
            raise ValueError(f"every eta_t = sqrt_eta_t**2 must lie in (0, 1], got {etas}")
        steps = etas.shape[0]
        if timestep_map is None:
            timestep_map = np.arange(steps, dtype=np.int64)
        timestep_map = np.asarray(timestep_map, dtype=np.int64)
        if timestep_map.shape != (steps,):
            raise ValueError(f"timestep_map must have shape ({steps},), got {timestep_map.shape}")

        etas_prev = np.append(0.0, etas[:-1])
        alpha = etas - etas_prev
        posterior_variance = kappa**2 * etas_prev / etas * alpha
        posterior_variance_clipped = np.append(posterior_variance[1], posterior_variance[1:])
        if predict_type in ("xstart", "residual"):
            weight_loss_mse = 0.5 / posterior_variance_clipped * (alpha / etas) ** 2
        else:
            weight_loss_mse = 0.5 / posterior_variance_clipped * (
                kappa * alpha / ((1 - etas) * sqrt_etas)
            ) ** 2
        input_scale_std = np.sqrt(etas * kappa**2 + 1)
        if not normalize_input:
            input_divisor = np.ones_like(etas)
        elif latent_flag:
            input_divisor = input_scale_std
        else:
            input_divisor = sqrt_etas * kappa * 3 + 1
        return cls(
            sqrt_etas=sqrt_etas,
            etas=etas,
            etas_prev=etas_prev,
            alpha=alpha,
            kappa_sqrt_etas=sqrt_etas * kappa,
            posterior_variance=posterior_variance,
            posterior_variance_clipped=posterior_variance_clipped,
            posterior_log_variance_clipped=np.log(posterior_variance_clipped),
            posterior_mean_coef1=etas_prev / etas,
            posterior_mean_coef2=alpha / etas,
            weight_loss_mse=weight_loss_mse,
            input_scale_std=input_scale_std,
            input_divisor=input_divisor,
            timestep_map=timestep_map,
            prior_std=np.asarray(kappa * sqrt_etas[-1], dtype=np.float64),
            kappa=float(kappa),
            predict_type=predict_type,
            normalize_input=bool(normalize_input),
            latent_flag=bool(latent_flag),
            scale_factor=1.0 if scale_factor is None else float(scale_factor),
            sf=int(sf),
            weighted_mse=bool(weighted_mse),
        )


def make_schedule(
    *,
    steps: int,
    min_noise_level: float,
    etas_end: float = 0.99,
    kappa: float = 2.0,
    power: float = 0.3,
    schedule_name: str = "exponential",
    timestep_respacing: int | None = None,
    predict_type: str = "xstart",
    normalize_input: bool = True,
    latent_flag: bool = True,
    scale_factor: float | None = 1.0,
    sf: int = 4,
    weighted_mse: bool = False,
) -> Schedule:
    """The schedule of ``create_gaussian_diffusion`` (exponential eta schedule, optional respacing)."""
    if schedule_name != "exponential":
        raise ValueError(f"only schedule_name='exponential' is supported, got {schedule_name!r}")
    base = exponential_sqrt_etas(steps, min_noise_level, etas_end, kappa, power)
    if timestep_respacing is None:
        timestep_respacing = steps
    if int(timestep_respacing) != timestep_respacing:
        raise ValueError(f"timestep_respacing must be an integer, got {timestep_respacing!r}")
    kept = space_timesteps(int(steps), int(timestep_respacing))
    return Schedule.from_sqrt_etas(
        base[kept],
        kappa=kappa,
        timestep_map=kept,
        predict_type=predict_type,
        normalize_input=normalize_input,
        latent_flag=latent_flag,
        scale_factor=scale_factor,
        sf=sf,
        weighted_mse=weighted_mse,
    )


# The keys of a ``diffusion`` config section (the official ``diffusion.params``), the one list of them.
DIFFUSION_KEYS = (
    "sf", "schedule_name", "schedule_kwargs", "etas_end", "steps", "min_noise_level", "kappa",
    "weighted_mse", "predict_type", "timestep_respacing", "scale_factor", "normalize_input", "latent_flag",
)


def schedule_from_config(params: Mapping[str, Any]) -> Schedule:
    """Builds a :class:`Schedule` from a ``diffusion`` config section or an official ``diffusion.params``
    mapping (YAML / fixture sidecar) with the keys :data:`DIFFUSION_KEYS`."""
    params = dict(params)
    unknown = sorted(set(params) - set(DIFFUSION_KEYS))
    if unknown:
        raise ValueError(f"unknown diffusion parameters: {unknown}")
    for required in ("steps", "min_noise_level", "normalize_input", "schedule_name"):
        if required not in params:
            raise ValueError(f"diffusion parameters lack {required!r}")
    schedule_kwargs = dict(params.get("schedule_kwargs") or {})
    if "power" not in schedule_kwargs:
        raise ValueError("diffusion parameters lack schedule_kwargs.power")
    return make_schedule(
        steps=int(params["steps"]),
        min_noise_level=float(params["min_noise_level"]),
        etas_end=float(params.get("etas_end", 0.99)),
        kappa=float(params.get("kappa", 1.0)),
        power=float(schedule_kwargs["power"]),
        schedule_name=params["schedule_name"],
        timestep_respacing=params.get("timestep_respacing"),
        predict_type=params.get("predict_type", "xstart"),
        normalize_input=bool(params["normalize_input"]),
        latent_flag=bool(params.get("latent_flag", True)),
        scale_factor=params.get("scale_factor"),
        sf=int(params.get("sf", 4)),
        weighted_mse=bool(params.get("weighted_mse", False)),
    )
