"""ResShift residual-shifting diffusion as pure functions of a :class:`~resshift_jax.schedule.Schedule`.

Shapes: latents / images are NHWC ``(B, H, W, C)``; ``t`` is ``(B,)`` (or a scalar, broadcast) of schedule
indices ``0..T-1``. Every schedule coefficient is gathered per sample and broadcast as ``(B, 1, 1, 1)``.

Forward process: x_t = x_0 + eta_t (y - x_0) + kappa sqrt(eta_t) eps. Reverse step:
x_{t-1} = coef1[t] x_t + coef2[t] x0_hat + 1[t>0] exp(0.5 log_var_clipped[t]) eps_t.

The denoiser is any callable ``model_fn(x_in, t_model, lq) -> output`` (same shape as ``x_in``), where
``x_in`` is the normalised state (:func:`scale_input`), ``t_model = sched.timestep_map[t]`` and ``lq`` is
the network condition passed through unchanged (the LQ image, or any pytree such as ``(lq, mask)``).
Autoencoders enter as ``encode_fn(image) -> latent`` and ``decode_fn(latent) -> image`` callables.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from resshift_jax import resize, tiling
from resshift_jax.schedule import Schedule

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
ImageFn = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------------------------- helpers
def _check_image(name: str, x: jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be an NHWC batch (4 dims), got shape {x.shape}")


def _check_same(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} must have the same shape")


def _timesteps(t: Any, batch: int) -> jax.Array:
    """Validates ``t`` and returns it as an int32 array of shape (batch,)."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"t must hold integer schedule indices, got dtype {t.dtype}")
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,):
        raise ValueError(f"t must have shape () or ({batch},), got {t.shape}")
    return t.astype(jnp.int32)


def _gather(arr: Any, t: jax.Array) -> jax.Array:
    """arr[t] as float32 with shape (B, 1, 1, 1) (the official per-sample float32 extraction)."""
    return jnp.asarray(arr, dtype=jnp.float32)[t][:, None, None, None]


def model_timesteps(sched: Schedule, t: jax.Array) -> jax.Array:
    """The index the network sees for schedule index ``t`` (``timestep_map``; identity unless respaced)."""
    return jnp.asarray(sched.timestep_map, dtype=jnp.int32)[t]


# ------------------------------------------------------------------------------------ forward process
def q_mean_variance(sched: Schedule, x0: jax.Array, y: jax.Array, t: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean (B,H,W,C), variance and log-variance (B,1,1,1) of q(x_t | x_0, y)."""
    _check_image("x0", x0)
    _check_same("x0", x0, "y", y)
    t = _timesteps(t, x0.shape[0])
    eta = _gather(sched.etas, t)
    variance = eta * sched.kappa**2
    return eta * (y - x0) + x0, variance, jnp.log(variance)


def q_sample(sched: Schedule, x0: jax.Array, y: jax.Array, t: Any, noise: jax.Array) -> jax.Array:
    """x_t = eta_t (y - x_0) + x_0 + kappa sqrt(eta_t) noise; all (B,H,W,C)."""
    _check_image("x0", x0)
    _check_same("x0", x0, "y", y)
    _check_same("x0", x0, "noise", noise)
    t = _timesteps(t, x0.shape[0])
    return _gather(sched.etas, t) * (y - x0) + x0 + _gather(sched.kappa_sqrt_etas, t) * noise


def q_posterior_mean_variance(
    sched: Schedule, x0: jax.Array, x_t: jax.Array, t: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q(x_{t-1} | x_t, x_0): mean (B,H,W,C), variance and clipped log-variance (B,1,1,1)."""
    _check_image("x_t", x_t)
    _check_same("x0", x0, "x_t", x_t)
    t = _timesteps(t, x_t.shape[0])
    mean = _gather(sched.posterior_mean_coef1, t) * x_t + _gather(sched.posterior_mean_coef2, t) * x0
    return mean, _gather(sched.posterior_variance, t), _gather(sched.posterior_log_variance_clipped, t)


def scale_input(sched: Schedule, x_t: jax.Array, t: Any) -> jax.Array:
    """Network input normalisation (``_scale_input``): x_t / sqrt(kappa^2 eta_t + 1) for latents."""
    _check_image("x_t", x_t)
    t = _timesteps(t, x_t.shape[0])
    if not sched.normalize_input:
        return x_t
    return x_t / _gather(sched.input_divisor, t)


def prior_sample(sched: Schedule, y: jax.Array, noise: jax.Array) -> jax.Array:
    """x_T = y + kappa sqrt(eta_{T-1}) noise; (B,H,W,C)."""
    _check_image("y", y)
    _check_same("y", y, "noise", noise)
    return y + jnp.asarray(sched.prior_std, dtype=jnp.float32) * noise


# ---------------------------------------------------------------------------- model parametrisations
def predict_xstart(sched: Schedule, model_output: jax.Array, x_t: jax.Array, y: jax.Array, t: Any) -> jax.Array:
    """x0_hat from the network output according to ``sched.predict_type``."""
    _check_same("model output", model_output, "x_t", x_t)
    t = _timesteps(t, x_t.shape[0])
    kind = sched.predict_type
    if kind == "xstart":
        return model_output
    if kind == "residual":
        return y - model_output
    eta = _gather(sched.etas, t)
    one_minus_eta = 1.0 - eta
    if kind == "epsilon":
        return (x_t - _gather(sched.sqrt_etas, t) * sched.kappa * model_output - eta * y) / one_minus_eta
    if kind == "epsilon_scale":
        return (x_t - model_output - eta * y) / one_minus_eta
    raise ValueError(f"unknown predict_type {kind!r}")


def predict_eps_from_xstart(sched: Schedule, x_t: jax.Array, y: jax.Array, t: Any, x0: jax.Array) -> jax.Array:
    """The noise implied by x_t and an x_0 estimate: (x_t - (1-eta) x0 - eta y) / (kappa sqrt(eta))."""
    t = _timesteps(t, x_t.shape[0])
    eta = _gather(sched.etas, t)
    return (x_t - (1.0 - eta) * x0 - eta * y) / _gather(sched.kappa_sqrt_etas, t)


def p_mean_variance(
    model_fn: ModelFn,
    sched: Schedule,
    x_t: jax.Array,
    y: jax.Array,
    t: Any,
    lq: Any = None,
    *,
    clip_denoised: bool = False,
    denoised_fn: Optional[ImageFn] = None,
) -> dict[str, jax.Array]:
    """One network evaluation -> p(x_{t-1} | x_t).

    Returns a dict: ``model_in``, ``model_output``, ``pred_xstart`` (B,H,W,C), ``mean`` (B,H,W,C),
    ``variance`` and ``log_variance`` (B,1,1,1). ``clip_denoised`` clamps x0_hat to [-1, 1] (pixel space
    only; the official sampler never clips with an autoencoder).
    """
    _check_image("x_t", x_t)
    _check_same("x_t", x_t, "y", y)
    t = _timesteps(t, x_t.shape[0])
    model_in = scale_input(sched, x_t, t)
    model_output = model_fn(model_in, model_timesteps(sched, t), lq)
    if model_output.shape != x_t.shape:
        raise ValueError(f"model output {model_output.shape} must have the state's shape {x_t.shape}")
    pred_xstart = predict_xstart(sched, model_output, x_t, y, t)
    if denoised_fn is not None:
        pred_xstart = denoised_fn(pred_xstart)
    if clip_denoised:
        pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, variance, log_variance = q_posterior_mean_variance(sched, pred_xstart, x_t, t)
    return {
        "model_in": model_in,
        "model_output": model_output,
        "pred_xstart": pred_xstart,
        "mean": mean,
        "variance": variance,
        "log_variance": log_variance,
    }


def p_sample(
    model_fn: ModelFn,
    sched: Schedule,
    x_t: jax.Array,
    y: jax.Array,
    t: Any,
    lq: Any,
    noise: jax.Array,
    *,
    clip_denoised: bool = False,
    denoised_fn: Optional[ImageFn] = None,
) -> dict[str, jax.Array]:
    """One reverse step: :func:`p_mean_variance` plus ``sample`` = mean + 1[t>0] exp(0.5 logvar) noise."""
    _check_same("x_t", x_t, "noise", noise)
    t = _timesteps(t, x_t.shape[0])
    out = p_mean_variance(model_fn, sched, x_t, y, t, lq, clip_denoised=clip_denoised, denoised_fn=denoised_fn)
    nonzero = (t != 0).astype(jnp.float32)[:, None, None, None]
    out["sample"] = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise
    return out


# ------------------------------------------------------------------------------------------- sampler
INTERMEDIATE_KEYS = ("model_in", "pred_xstart", "mean", "sample")


def sample(
    model_fn: ModelFn,
    sched: Schedule,
    z_y: jax.Array,
    lq: Any = None,
    noise_T: Optional[jax.Array] = None,
    *,
    step_noises: Optional[jax.Array] = None,
    key: Optional[jax.Array] = None,
    clip_denoised: bool = False,
    denoised_fn: Optional[ImageFn] = None,
    return_intermediates: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the T reverse steps t = T-1..0 from the prior around ``z_y`` (a ``lax.scan``).

    z_y: (B,H,W,C) encoded (up-sampled) LQ. Noise comes either from arrays — ``noise_T`` (B,H,W,C) and
    ``step_noises`` (T,B,H,W,C) ordered t = T-1..0 (the last one is multiplied by 0, as in the official code
    which draws it anyway) — or from ``key`` (used for whatever is not given). Returns z_0 (B,H,W,C), and with
    ``return_intermediates`` also a dict of (T,B,H,W,C) arrays ``model_in, pred_xstart, mean, sample``.
    """
    _check_image("z_y", z_y)
    steps = sched.num_timesteps
    if noise_T is None or step_noises is None:
        if key is None:
            raise ValueError("sample needs a PRNG key unless both noise_T and step_noises are given")
        key_T, key_steps = jax.random.split(key)
    else:
        key_T = key_steps = None
    if noise_T is None:
        noise_T = jax.random.normal(key_T, z_y.shape, z_y.dtype)
    _check_same("z_y", z_y, "noise_T", noise_T)
    if step_noises is not None and step_noises.shape != (steps,) + z_y.shape:
        raise ValueError(f"step_noises must have shape {(steps,) + z_y.shape}, got {step_noises.shape}")

    batch = z_y.shape[0]
    order = jnp.arange(steps - 1, -1, -1, dtype=jnp.int32)

    def step(z_t, xs):
        if step_noises is None:
            t_scalar = xs
            noise = jax.random.normal(jax.random.fold_in(key_steps, t_scalar), z_y.shape, z_y.dtype)
        else:
            t_scalar, noise = xs
        t = jnp.full((batch,), t_scalar, dtype=jnp.int32)
        out = p_sample(model_fn, sched, z_t, z_y, t, lq, noise,
                       clip_denoised=clip_denoised, denoised_fn=denoised_fn)
        record = {k: out[k] for k in INTERMEDIATE_KEYS} if return_intermediates else None
        return out["sample"].astype(z_t.dtype), record

    xs = order if step_noises is None else (order, step_noises)
    z_0, records = jax.lax.scan(step, prior_sample(sched, z_y, noise_T), xs)
    if return_intermediates:
        return z_0, records
    return z_0


# ------------------------------------------------------------------------------------- training loss
def training_loss(
    model_fn: ModelFn,
    sched: Schedule,
    z_start: jax.Array,
    z_y: jax.Array,
    t: Any,
    noise: jax.Array,
    lq: Any = None,
    *,
    weighted: Optional[bool] = None,
) -> dict[str, jax.Array]:
    """The ResShift MSE term for latents z_start, z_y (B,H,W,C) at timesteps t (B,).

    Returns ``mse`` (B,): mean over H,W,C of (target - output)^2, times ``weight_loss_mse[t]`` when
    ``weighted`` (default: ``sched.weighted_mse``); plus ``z_t``, ``model_in``, ``model_output`` and
    ``pred_zstart`` (B,H,W,C). The target is z_start for xstart, z_y - z_start for residual, noise for epsilon.
    """
    _check_image("z_start", z_start)
    _check_same("z_start", z_start, "z_y", z_y)
    _check_same("z_start", z_start, "noise", noise)
    weighted = sched.weighted_mse if weighted is None else bool(weighted)
    t = _timesteps(t, z_start.shape[0])
    z_t = q_sample(sched, z_start, z_y, t, noise)
    model_in = scale_input(sched, z_t, t)
    model_output = model_fn(model_in, model_timesteps(sched, t), lq)
    if model_output.shape != z_start.shape:
        raise ValueError(f"model output {model_output.shape} must have the latent's shape {z_start.shape}")
    kind = sched.predict_type
    if kind == "xstart":
        target = z_start
    elif kind == "residual":
        target = z_y - z_start
    elif kind == "epsilon":
        target = noise
    else:  # epsilon_scale
        target = noise * _gather(sched.kappa_sqrt_etas, t)
    mse = jnp.mean(jnp.square(target.astype(jnp.float32) - model_output.astype(jnp.float32)), axis=(1, 2, 3))
    if kind == "epsilon_scale":
        mse = mse / (sched.kappa**2 * _gather(sched.etas, t)[:, 0, 0, 0])
    if weighted:
        mse = mse * _gather(sched.weight_loss_mse, t)[:, 0, 0, 0]
    return {
        "mse": mse,
        "z_t": z_t,
        "model_in": model_in,
        "model_output": model_output,
        "pred_zstart": predict_xstart(sched, model_output, z_t, z_y, t),
    }


# ------------------------------------------------------------------------------- autoencoder glue
def upsample_lq(sched: Schedule, y: jax.Array) -> jax.Array:
    """PyTorch-exact bicubic up-sampling of the LQ image by ``sched.sf`` (identity when sf == 1)."""
    _check_image("y", y)
    if sched.sf == 1:
        return y
    return resize.interpolate_bicubic(y, scale_factor=float(sched.sf))


def network_lq(sched: Schedule, lq: jax.Array, *, pixel_space: bool) -> jax.Array:
    """The UNet's ``lq`` input. Latent models take the LQ image as it is (their feature extractor brings it to
    the latent size); a pixel-space model runs at the output size, so it gets the bicubic-upsampled LQ."""
    return upsample_lq(sched, lq) if pixel_space else lq


def encode_first_stage(
    encode_fn: Optional[ImageFn], sched: Schedule, x: jax.Array, *, up_sample: bool = False
) -> jax.Array:
    """encode_fn(bicubic_up(x) if up_sample else x) * scale_factor; without an encoder the image itself."""
    if up_sample:
        x = upsample_lq(sched, x)
    else:
        _check_image("x", x)
    if encode_fn is None:
        return x
    return encode_fn(x) * sched.scale_factor


def decode_first_stage(decode_fn: Optional[ImageFn], sched: Schedule, z: jax.Array) -> jax.Array:
    """decode_fn(z / scale_factor); without a decoder the latent itself."""
    _check_image("z", z)
    if decode_fn is None:
        return z
    return decode_fn(z / sched.scale_factor)


def image_training_loss(
    model_fn: ModelFn,
    encode_fn: Optional[ImageFn],
    sched: Schedule,
    x_start: jax.Array,
    y: jax.Array,
    t: Any,
    noise: jax.Array,
    lq: Any = None,
    *,
    weighted: Optional[bool] = None,
) -> dict[str, jax.Array]:
    """``training_losses`` of the official code: encodes HQ x_start and up-sampled LQ y, then :func:`training_loss`.

    ``lq`` defaults to ``y`` (the network condition). The returned dict also holds ``z_start`` and ``z_y``.
    The encoder is treated as frozen (``stop_gradient``).
    """
    z_y = jax.lax.stop_gradient(encode_first_stage(encode_fn, sched, y, up_sample=True))
    z_start = jax.lax.stop_gradient(encode_first_stage(encode_fn, sched, x_start, up_sample=False))
    out = training_loss(model_fn, sched, z_start, z_y, t, noise, y if lq is None else lq, weighted=weighted)
    out["z_start"] = z_start
    out["z_y"] = z_y
    return out


# ---------------------------------------------------------------------------------- full pipeline
def restore_lq(
    model_fn: ModelFn,
    sched: Schedule,
    y: jax.Array,
    *,
    encode_fn: Optional[ImageFn],
    decode_fn: Optional[ImageFn],
    noise_T: Optional[jax.Array] = None,
    step_noises: Optional[jax.Array] = None,
    key: Optional[jax.Array] = None,
    cond: Any = None,
    pad_multiple: Optional[int] = None,
    clamp: bool = True,
) -> jax.Array:
    """LQ image (B,H,W,C) in [-1,1] -> restored image (B, H*sf, W*sf, C), like ``ResShiftSampler.sample_func``.

    Steps: optional reflect padding (bottom/right) of ``y`` and of every leaf of ``cond`` to a multiple of
    ``pad_multiple`` (the official ``padding_offset``), bicubic up-sampling by sf, encoding, the T-step
    sampler (x0_hat clipped only without an autoencoder, as in the official code), decoding, cropping back
    and clamping to [-1, 1]. ``cond`` is the network condition (defaults to the padded ``y``). Noises as
    in :func:`sample` (they must have the latent's shape of the *padded* image).
    """
    _check_image("y", y)
    height, width = y.shape[1], y.shape[2]
    if pad_multiple is not None:
        y = tiling.pad_image_to_multiple(y, pad_multiple)
        if cond is not None:
            cond = jax.tree_util.tree_map(lambda c: tiling.pad_image_to_multiple(c, pad_multiple), cond)
    lq = y if cond is None else cond
    z_y = encode_first_stage(encode_fn, sched, y, up_sample=True)
    z_0 = sample(model_fn, sched, z_y, lq, noise_T, step_noises=step_noises, key=key,
                 clip_denoised=decode_fn is None)
    x = decode_first_stage(decode_fn, sched, z_0)
    x = x[:, : height * sched.sf, : width * sched.sf]
    return jnp.clip(x, -1.0, 1.0) if clamp else x
