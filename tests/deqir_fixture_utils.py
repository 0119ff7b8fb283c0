"""Shared helpers for the DeqIR sampler tests: reading the sampling / inversion fixtures.

Everything is read from the fixture files and their sidecars: operator (``degradations.npz`` entry named in
the sidecar), eps model (tiny UNet, plain or "wrapped" as the sidecar's ``eps_model`` says), schedule
arrays, weights nw/etw and tolerances. Fixture arrays are NCHW; they are transposed to NHWC here only.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from deqir_jax import convert_keys
from deqir_jax import operators as ops
from deqir_jax.models import adm

def _discover_sampling_cases() -> tuple[str, ...]:
    """Names of the ``deqir/deqir_sampling_<name>.npz`` files in the fixture folder; nothing about a
    particular fixture set is assumed. Deterministic cases (sidecar nw = etw = 0) come first, then by
    name, so that ``SAMPLING_CASES[0]`` (used by the quick tests) is the plain DDIM + DDNM chain if any."""
    import json
    import os
    import pathlib

    root = pathlib.Path(os.environ.get("REFERENCE_FIXTURES", "../shared/fixtures"))
    if not root.is_absolute():
        root = (pathlib.Path(__file__).resolve().parents[1] / root).resolve()
    prefix = "deqir_sampling_"
    def order(path):
        case = json.loads(path.with_suffix(".json").read_text()).get("case", {})
        return (float(case.get("nw", 0)) + float(case.get("etw", 0)) > 0, path.stem)

    names = [p.stem[len(prefix):] for p in sorted((root / "deqir").glob(f"{prefix}*.npz"), key=order)]
    if not names:
        raise FileNotFoundError(f"no {prefix}*.npz sampling fixtures under {root / 'deqir'}")
    return tuple(names)


SAMPLING_CASES = _discover_sampling_cases()


def nhwc(a) -> np.ndarray:
    """NCHW (or (1, C, H, W) / (T, C, H, W)) fixture array -> NHWC numpy."""
    return np.moveaxis(np.asarray(a), 1, -1)


def parse_tol(text: str, kind: str = "atol") -> float:
    """First ``atol X`` / ``rtol X`` in a sidecar tolerance sentence."""
    match = re.search(rf"{kind}\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)", text)
    if not match:
        raise ValueError(f"no {kind} in sidecar tolerance {text!r}")
    return float(match.group(1))


# Official operator class -> this port's builder (used when an entry's key is not a builder name).
_BUILDER_OF_CLASS = {
    "SuperResolution": "sr_averagepooling", "SRConv": "sr_bicubic", "Deblurring": "deblur_uni",
    "Deblurring2D": "deblur_aniso", "Inpainting": "inpainting", "Colorization": "colorization",
    "WalshHadamardCS": "cs_walshhadamard", "Denoising": "denoising",
}


def operator_from_degradations(deg, key: str) -> ops.LinearOperator:
    """The operator of ``degradations.json`` entry ``key``, with the npz's masks / permutations / kernels.

    Image size and channel count come from the npz's ``x``; deblurring operators are built from the kernel
    tensors stored under ``<key>/kernel`` (``<key>/kernel1``, ``<key>/kernel2`` for ``Deblurring2D``), the
    argument of the official class (the sidecar ``params`` only describe it, and are empty for deblur_uni).
    """
    info = deg.meta["operators"][key]
    cls, params = info["class"], dict(info["params"])
    image_size = tuple(int(s) for s in deg["x"].shape[-2:])
    name = re.sub(r"_x\d+$", "", key)
    if name not in ops.OPERATOR_NAMES:  # e.g. a second Deblurring entry: the builder of its class
        name = _BUILDER_OF_CLASS.get(cls, name)
    kwargs: dict[str, Any] = {"channels": int(deg["x"].shape[1])}
    if cls == "SuperResolution":
        kwargs["factor"] = params["ratio"]
    elif cls == "SRConv":
        kwargs["factor"] = params["stride"]
    elif cls == "Deblurring":
        kwargs["kernel"] = deg[f"{key}/kernel"]
        kwargs["singular_perm"] = deg[f"{key}/perm"]
    elif cls == "Deblurring2D":
        kwargs["kernel1"], kwargs["kernel2"] = deg[f"{key}/kernel1"], deg[f"{key}/kernel2"]
        kwargs["singular_perm"] = deg[f"{key}/perm"]
    elif cls == "Inpainting":
        kwargs["mask"] = deg[f"{key}/mask"]
    elif cls == "WalshHadamardCS":
        kwargs["ratio"] = params["ratio"]
        kwargs["perm"] = deg[f"{key}/perm"]
    elif cls not in ("Colorization", "Denoising") or params:
        raise ValueError(f"fixture operator {key}: no builder for class {cls} with params {params}")
    return ops.make_operator(name, image_size, **kwargs)


def load_tiny_unet(load_fixture) -> tuple[Any, Any]:
    """(model, params) of ``tiny_unet.npz`` through the user-facing converter."""
    fx = load_fixture("deqir/tiny_unet")
    cfg = adm.config_from_create_model_kwargs(fx.meta["constructor_kwargs"])
    state = {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}
    return adm.model_from_config(cfg), convert_keys.convert_adm_state_dict(state, cfg)


def make_eps_apply(model, description: str, abar_padded) -> Callable:
    """``eps_apply(params, x, t)`` as the sidecar's ``eps_model`` describes: the plain tiny UNet, or
    the "wrapped" model sqrt(1-ab) x / (v ab + 1 - ab) + sqrt(ab) unet(x, t)[..., :3] (prior variance v)."""
    if description.startswith("unet"):
        return lambda params, x, t: model.apply({"params": params}, x, t)
    if description.startswith("wrapped"):
        match = re.search(r"ab_t\s*\*\s*([0-9.]+)", description)
        if not match:
            raise ValueError(f"cannot read the prior variance from {description!r}")
        var = float(match.group(1))

        def eps_apply(params, x, t):
            ab = jnp.asarray(abar_padded, x.dtype)[t + 1][:, None, None, None]
            out = model.apply({"params": params}, x, t)[..., :3].astype(x.dtype)
            return jnp.sqrt(1 - ab) * x / (ab * var + 1 - ab) + jnp.sqrt(ab) * out

        return eps_apply
    raise ValueError(f"unknown eps model {description!r}")


class SamplingCase(NamedTuple):
    fx: Any
    meta: dict
    op: ops.LinearOperator
    eps_apply: Callable
    params: Any
    x_T: jnp.ndarray  # (1, H, W, C)
    y: jnp.ndarray  # operator layout, batch 1
    z: jnp.ndarray
    t: jnp.ndarray
    at: jnp.ndarray
    at_next: jnp.ndarray
    nw: float
    etw: float
    T: int


def load_sampling_case(load_fixture, name: str, tiny=None) -> SamplingCase:
    fx = load_fixture(f"deqir/deqir_sampling_{name}")
    deg = load_fixture("deqir/degradations")
    sched = load_fixture("deqir/schedule")
    case = fx.meta["case"]
    model, params = tiny if tiny is not None else load_tiny_unet(load_fixture)
    op = operator_from_degradations(deg, case["operator_key"])
    return SamplingCase(
        fx=fx, meta=fx.meta, op=op,
        eps_apply=make_eps_apply(model, fx.meta["eps_model"], sched["abar_padded"]),
        params=params,
        x_T=jnp.asarray(nhwc(fx["x_T"])), y=ops.official_vector_to_y(op, jnp.asarray(fx["y"])),
        z=jnp.asarray(nhwc(fx["z"])), t=jnp.asarray(fx["t"], jnp.int32),
        at=jnp.asarray(fx["at"]), at_next=jnp.asarray(fx["at_next"]),
        nw=float(case["nw"]), etw=float(case["etw"]), T=int(case["T"]),
    )


def maxabs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

