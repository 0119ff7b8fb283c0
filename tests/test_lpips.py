"""LPIPS-VGG in Flax against an independent PyTorch re-statement of the lpips v0.1 forward, with random weights.

The torch side is written here from the paper/package definition (ScalingLayer, torchvision VGG16 features,
unit normalisation over channels, 1x1 heads without bias, spatial mean, sum over the five taps); its
state dicts use the real torchvision / lpips key names, so the same converter a user runs is exercised.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ircore import lpips
from ircore.torch_convert import ConversionError

_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _torch_vgg16_features() -> torch.nn.Sequential:
    layers, c_in = [], 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(c_in, v, 3, padding=1), torch.nn.ReLU(inplace=False)]
            c_in = v
    return torch.nn.Sequential(*layers)


def _torch_lpips(features, heads, x, y):
    shift = torch.tensor(lpips.SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(lpips.SCALE).view(1, 3, 1, 1)

    def taps(img):
        h, out = (img - shift) / scale, []
        for i, layer in enumerate(features):
            h = layer(h)
            if i - 1 in lpips.TAP_INDICES and isinstance(layer, torch.nn.ReLU):
                out.append(h)
            if i == 29:
                break
        return out

    total = 0.0
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        fx = fx / (torch.sqrt(torch.sum(fx**2, dim=1, keepdim=True)) + 1e-10)
        fy = fy / (torch.sqrt(torch.sum(fy**2, dim=1, keepdim=True)) + 1e-10)
        d = torch.nn.functional.conv2d((fx - fy) ** 2, heads[k])
        total = total + d.mean(dim=(2, 3), keepdim=True)
    return total.reshape(-1)


@pytest.fixture(scope="module")
def torch_weights():
    torch.manual_seed(0)
    features = _torch_vgg16_features().eval()
    heads = [torch.rand(1, c, 1, 1) * 0.1 for c in lpips.TAP_CHANNELS]
    vgg_state = {f"features.{k}": v.detach().numpy() for k, v in features.state_dict().items()}
    vgg_state["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # present in torchvision files; ignored
    lin_state = {f"lin{k}.model.1.weight": h.numpy() for k, h in enumerate(heads)}
    return features, heads, vgg_state, lin_state


def _images(seed: int, shape=(2, 32, 40, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_matches_torch_reference(torch_weights):
    features, heads, vgg_state, lin_state = torch_weights
    params = lpips.convert_torch_state_dict(vgg_state, lin_state)
    x, y = _images(1), _images(2)
    got = np.asarray(jax.jit(lpips.lpips_distance)(params, x, y))
    with torch.no_grad():
        want = _torch_lpips(features, heads, torch.from_numpy(x).permute(0, 3, 1, 2),
                            torch.from_numpy(y).permute(0, 3, 1, 2)).numpy()
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all(got > 0)


def test_whole_lpips_state_dict_layout(torch_weights):
    """A ``lpips.LPIPS().state_dict()`` (net.slice*, lin*, lins.* aliases, scaling buffers) converts too."""
    _, _, vgg_state, lin_state = torch_weights
    whole = {}
    for key, value in vgg_state.items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            if index <= 29:
                whole[f"net.slice{1 + sum(index >= b for b in (4, 9, 16, 23))}.{key[len('features.'):]}"] = value
    for key, value in lin_state.items():
        whole[key] = value
        whole[key.replace("lin", "lins.", 1)] = value
    whole["scaling_layer.shift"] = np.asarray(lpips.SHIFT, np.float32).reshape(1, 3, 1, 1)
    a = lpips.convert_torch_state_dict(vgg_state, lin_state)
    b = lpips.convert_torch_state_dict(whole)
    for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(la, lb)


def test_identical_images_give_zero_and_bf16_runs():
    params = lpips.init_params(jax.random.key(3))
    x = _images(4)
    same = lpips.lpips_distance(params, x, x)
    np.testing.assert_array_equal(np.asarray(same), np.zeros(2, np.float32))
    d32 = np.asarray(lpips.lpips_distance(params, x, _images(5)))
    d16 = np.asarray(lpips.lpips_distance(params, x, _images(5), dtype=jnp.bfloat16))
    assert np.all(d32 > 0)
    np.testing.assert_allclose(d16, d32, rtol=5e-2)


def test_gradient_flows_to_input():
    params = lpips.init_params(jax.random.key(3))
    x, y = _images(6), _images(7)
    g = jax.grad(lambda a: jnp.sum(lpips.lpips_distance(params, a, y)))(jnp.asarray(x))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0


def test_missing_and_unknown_keys_are_named(torch_weights):
    _, _, vgg_state, lin_state = torch_weights
    partial = {k: v for k, v in lin_state.items() if not k.startswith("lin4")}
    with pytest.raises(ConversionError, match="lin4"):
        lpips.convert_torch_state_dict(vgg_state, partial)
    with pytest.raises(ConversionError, match="bogus.weight"):
        lpips.convert_torch_state_dict(vgg_state, {**lin_state, "bogus.weight": np.zeros(3)})


def test_small_image_is_rejected():
    params = lpips.init_params(jax.random.key(0))
    x = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips.lpips_distance(params, x, x)
