"""Reading PyTorch checkpoints and mapping their tensors onto Flax parameter trees.

The pieces:

* :func:`load_torch_state_dict` reads ``.pt/.pth/.ckpt`` (torch imported lazily, only here) or ``.npz``
  into ``{name: np.ndarray}``.
* Layout rules: :func:`conv_kernel` (OIHW -> HWIO), :func:`linear_kernel` ((out, in) -> (in, out)),
  :func:`conv1d_kernel` ((out, in, 1) -> (in, out) or (1, in, out)), chosen by :func:`to_flax_layout`
  from the source shape and the target shape.
* :func:`convert_state_dict`: a strict mapper. A model module supplies ``key_to_path(torch_key) ->
  tuple | None`` (``None`` = a buffer to ignore); every source key must land on exactly one Flax leaf of
  matching size and every Flax leaf must be filled. Otherwise one :class:`ConversionError` lists every
  unused source key, unfilled parameter and shape mismatch.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

StateDict = dict[str, np.ndarray]
KeyToPath = Callable[[str], "tuple[str, ...] | None"]


# wrapper prefixes on parameter names: DataParallel / DDP and torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names every offending key."""


def strip_prefix(key: str, prefixes: Iterable[str] = WRAPPER_PREFIXES) -> str:
    """``key`` without the wrapper prefixes it starts with (DDP's ``module.``, ``_orig_mod.``; nested ones too)."""
    prefixes = tuple(prefixes)
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def strip_prefixes(state: Mapping[str, Any], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict[str, Any]:
    """``state`` with :func:`strip_prefix` applied to every key."""
    prefixes = tuple(prefixes)
    return {strip_prefix(key, prefixes): value for key, value in state.items()}


def _unwrap_container(obj: Any) -> Mapping[str, Any]:
    """Finds the tensor dict inside common checkpoint containers (``state_dict``, ``model``, ``params_ema``...)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    for container in ("state_dict", "params_ema", "params", "model", "ema"):
        inner = obj.get(container)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            if any(hasattr(v, "shape") for v in inner.values()):
                return inner
    return obj


def load_torch_state_dict(path: str | os.PathLike, *, prefixes: Iterable[str] = WRAPPER_PREFIXES) -> StateDict:
    """Reads a checkpoint file into ``{name: float32/int np.ndarray}``.

    ``.npz`` files are read with numpy (no torch needed); anything else is read with ``torch.load`` on the
    CPU with ``weights_only=True``. Wrapper prefixes such as DataParallel's ``module.`` are removed.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as data:
            raw = {k: data[k] for k in data.files}
    else:
        try:
            import torch  # noqa: PLC0415 - optional dependency, only for conversion
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {path.name} needs PyTorch: install the converter extra, pip install '.[convert]'"
            ) from err
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt files
            raise ConversionError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
        raw = {}
        for key, value in _unwrap_container(obj).items():
            if hasattr(value, "detach"):
                value = value.detach().cpu()
                if value.is_floating_point():
                    value = value.float()
                raw[key] = value.numpy()
    return strip_prefixes(raw, prefixes)


# ----------------------------------------------------------------------------------------------- layouts
def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Conv2d weight (O, I, kH, kW) -> Flax Conv kernel (kH, kW, I, O)."""
    return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return np.transpose(w)


def conv1d_kernel(w: np.ndarray, target_ndim: int) -> np.ndarray:
    """Conv1d weight (O, I, k) -> Flax Conv kernel (k, I, O), or a Dense kernel (I, O) when k == 1."""
    kernel = np.transpose(w, (2, 1, 0))
    if target_ndim == 2:
        if kernel.shape[0] != 1:
            raise ValueError(f"Conv1d kernel of size {kernel.shape[0]} cannot become a Dense kernel")
        return kernel[0]
    return kernel


def to_flax_layout(value: np.ndarray, target_shape: tuple[int, ...], leaf_name: str) -> np.ndarray:
    """Applies the PyTorch -> Flax layout rule implied by the two shapes and the Flax leaf name."""
    value = np.asarray(value)
    if leaf_name == "kernel":
        if value.ndim == 4:
            return conv_kernel(value)
        if value.ndim == 3:
            return conv1d_kernel(value, len(target_shape))
        if value.ndim == 2:
            return linear_kernel(value)
    return value


# ----------------------------------------------------------------------------------------------- mapping
def _shape_tree(params: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = traverse_util.flatten_dict(params)
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    target: Any,
    key_to_path: KeyToPath,
    *,
    dtype: Any = np.float32,
) -> dict:
    """Maps a PyTorch state dict onto a Flax parameter tree, strictly.

    Args:
      state: ``{torch_name: array}`` as read by :func:`load_torch_state_dict`.
      target: the Flax parameter tree (arrays or ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``) whose
        structure and shapes the result must have (without the ``{"params": ...}`` wrapper).
      key_to_path: model-specific name rule, torch key -> Flax path tuple, or ``None`` for entries that are
        not parameters (buffers the model recomputes).
      dtype: dtype of floating-point leaves in the result.

    Returns:
      A nested dict of numpy arrays with exactly the structure of ``target``.

    Raises:
      ConversionError: listing every unused source key, every unfilled parameter, every shape mismatch and every
        tensor holding NaN or infinite values.
    """
    shapes = _shape_tree(target)
    filled: dict[tuple[str, ...], np.ndarray] = {}
    unused: list[str] = []
    mismatched: list[str] = []
    duplicated: list[str] = []
    nonfinite: list[str] = []
    for key in sorted(state):
        path = key_to_path(key)
        if path is None:
            continue
        path = tuple(path)
        if path not in shapes:
            unused.append(key)
            continue
        value = to_flax_layout(state[key], shapes[path], path[-1])
        if value.shape != shapes[path]:
            mismatched.append(
                f"{key} {tuple(np.shape(state[key]))} -> {'/'.join(path)} expects {shapes[path]}"
            )
            continue
        if path in filled:
            duplicated.append(f"{key} -> {'/'.join(path)}")
            continue
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            nonfinite.append(f"{key} ({bad} of {np.size(value)} values)")
        filled[path] = value.astype(dtype) if np.issubdtype(value.dtype, np.floating) else value
    missing = sorted("/".join(p) for p in shapes if p not in filled)
    problems = []
    if unused:
        problems.append(f"{len(unused)} unused checkpoint key(s): {', '.join(unused)}")
    if missing:
        problems.append(f"{len(missing)} parameter(s) not in the checkpoint: {', '.join(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched)}")
    if duplicated:
        problems.append(f"{len(duplicated)} parameter(s) filled twice: {', '.join(duplicated)}")
    if nonfinite:
        problems.append(f"{len(nonfinite)} tensor(s) with NaN or infinite values (a damaged or diverged "
                        f"checkpoint): {', '.join(nonfinite)}")
    if problems:
        raise ConversionError("checkpoint does not match the model: " + " | ".join(problems))
    return traverse_util.unflatten_dict(filled)


def split_torch_key(key: str) -> tuple[list[str], str]:
    """``'a.0.b.weight'`` -> (``['a', '0', 'b']``, ``'weight'``): module path and tensor name."""
    parts = key.split(".")
    return parts[:-1], parts[-1]


def default_leaf_name(torch_leaf: str, is_norm: bool) -> str:
    """Names a torch tensor the Flax way: conv/linear ``weight`` -> ``kernel``, norm ``weight`` -> ``scale``."""
    if torch_leaf == "weight":
        return "scale" if is_norm else "kernel"
    if torch_leaf in ("gamma",):
        return "scale"
    if torch_leaf in ("beta",):
        return "bias"
    return torch_leaf
