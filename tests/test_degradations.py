"""ResShift training-data degradations (resshift_jax.degradations): kernels, resize, noise, JPEG, the Real-ESRGAN
pipeline, bicubic SR, GFPGAN face degradation, LaMa masks.

References used here: independent NumPy/SciPy formulas (basicsr kernel definitions), PyTorch ``F.interpolate`` /
``F.conv2d`` (resize and blur semantics, and a replay of the official second-order chain with the drawn
parameters), Pillow's libjpeg (JPEG), and mask statistics measured once with the official generator.
"""
from __future__ import annotations

import io
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import special
from skimage import data

from ircore.config_utils import load_config_file
from resshift_jax import resize as resize_lib
from resshift_jax.degradations import face, jpeg, kernels, masks, noise, pipeline, resample

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs/resshift/degradation_realesrgan.py"
MODES = resample.RESIZE_MODES


def _config(name):
    return load_config_file(CONFIG, name)


def _photo(name: str, size: int) -> np.ndarray:
    """A size x size uint8 crop with detail from a scikit-image photo."""
    img = getattr(data, name)()
    top, left = {"astronaut": (96, 160), "coffee": (100, 200)}[name]
    crop = img[top:top + 2 * size:2, left:left + 2 * size:2] if size <= 64 else img[top:top + size, left:left + size]
    return np.ascontiguousarray(crop)


def _numpy_params(p: dict) -> dict:
    """Drawn parameters as NumPy (PRNG keys dropped)."""
    return {k: np.asarray(v) for k, v in p.items() if not k.endswith("key")}


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# ----------------------------------------------------------------------------------------------- kernels


def _np_quadratic(size, sx, sy, theta):
    """basicsr: grid from -k//2+1 .. k//2, Sigma = U diag(sx^2, sy^2) U^T, q = xy Sigma^-1 xy^T."""
    ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    xy = np.stack([xx, yy], -1)
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    sigma = u @ np.diag([sx**2, sy**2]) @ u.T
    return np.sum((xy @ np.linalg.inv(sigma)) * xy, -1)


def _np_kernel(kind, size, sx, sy, theta, beta=1.0, cutoff=1.0):
    if kind == "sinc":
        c = (size - 1) / 2
        y, x = np.mgrid[:size, :size]
        r = np.hypot(x - c, y - c)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
        k[int(c), int(c)] = cutoff**2 / (4 * np.pi)
    else:
        q = _np_quadratic(size, sx, sy, theta)
        k = {"gauss": np.exp(-0.5 * q), "general": np.exp(-0.5 * q**beta), "plateau": 1 / (q**beta + 1)}[kind]
    return k / k.sum()


def _jax_kernel(kind, grid, size, sx, sy, theta, beta=1.0, cutoff=1.0):
    if kind == "gauss":
        return kernels.gaussian_kernel(grid, sx, sy, theta, size)
    if kind == "general":
        return kernels.generalized_gaussian_kernel(grid, sx, sy, theta, beta, size)
    if kind == "plateau":
        return kernels.plateau_kernel(grid, sx, sy, theta, beta, size)
    return kernels.circular_lowpass_kernel(grid, cutoff, size)


@pytest.mark.parametrize(
    "kind,size,sx,sy,theta,beta,cutoff",
    [
        ("gauss", 21, 2.0, 2.0, 0.0, 1.0, 0.0),
        ("gauss", 13, 3.0, 0.7, 0.6, 1.0, 0.0),
        ("general", 9, 1.5, 2.5, -2.1, 0.6, 0.0),
        ("general", 21, 2.2, 2.2, 0.0, 3.5, 0.0),
        ("plateau", 15, 0.9, 2.9, 1.1, 1.7, 0.0),
        ("plateau", 7, 1.2, 1.2, 0.0, 1.0, 0.0),
        ("sinc", 21, 0, 0, 0, 1.0, math.pi / 5),
        ("sinc", 11, 0, 0, 0, 1.0, 2.7),
    ],
)
def test_kernel_matches_basicsr_formula(kind, size, sx, sy, theta, beta, cutoff):
    """Each type equals the basicsr formula on its own k x k grid, zero-padded centred in a 21 x 21 grid."""
    grid = 21
    got = np.asarray(_jax_kernel(kind, grid, size, sx, sy, theta, beta, cutoff))
    want = np.pad(_np_kernel(kind, size, sx, sy, theta, beta, cutoff), (grid - size) // 2)
    assert got.shape == (grid, grid)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-7)
    assert abs(got.sum() - 1.0) < 1e-5


def test_kernel_symmetries():
    """Isotropic kernels are symmetric under transpose and flips; anisotropic ones only under 180 deg rotation."""
    iso = [kernels.gaussian_kernel(21, 2.0, 2.0, 0.0, 17), kernels.generalized_gaussian_kernel(21, 1.3, 1.3, 0.0, 2.0),
           kernels.plateau_kernel(21, 2.5, 2.5, 0.0, 1.4, 9), kernels.circular_lowpass_kernel(21, 1.3, 15)]
    for k in map(np.asarray, iso):
        for t in (k.T, k[::-1], k[:, ::-1]):
            np.testing.assert_allclose(k, t, atol=1e-7)
    aniso = np.asarray(kernels.gaussian_kernel(21, 3.0, 0.8, 0.5))
    np.testing.assert_allclose(aniso, aniso[::-1, ::-1], atol=1e-7)
    assert np.abs(aniso - aniso.T).max() > 1e-3
    # theta = pi/2 swaps the axes: sigma_x along rows
    swapped = np.asarray(kernels.gaussian_kernel(21, 3.0, 0.8, math.pi / 2))
    np.testing.assert_allclose(swapped, np.asarray(kernels.gaussian_kernel(21, 0.8, 3.0, 0.0)), atol=1e-6)


def test_bessel_j1_accuracy():
    z = np.linspace(0, 45, 4001).astype(np.float32)
    got = np.asarray(kernels.bessel_j1(jnp.asarray(z), 45.0))
    assert np.abs(got - special.j1(z.astype(np.float64))).max() < 3e-6


@pytest.fixture(scope="module")
def realsr_spec():
    return pipeline.RealESRGANSpec.from_config(_config("realsr_x4"))


def test_random_kernels_over_many_keys(realsr_spec):
    """Every draw sums to one, is zero outside the largest allowed window and finite; all types occur."""
    keys = jax.random.split(jax.random.key(3), 512)
    for spec in (realsr_spec.kernel1, realsr_spec.kernel2):
        ks = np.asarray(jax.jit(jax.vmap(lambda k: kernels.sample_blur_kernel(k, spec)))(keys))
        g = spec.grid_size
        assert ks.shape == (512, g, g) and np.all(np.isfinite(ks))
        np.testing.assert_allclose(ks.sum(axis=(1, 2)), 1.0, atol=1e-5)
        edge = (g - max(spec.kernel_sizes)) // 2
        if edge:
            assert np.all(ks[:, :edge] == 0) and np.all(ks[:, :, -edge:] == 0)
        # sinc kernels have negative side lobes; about sinc_prob of the draws (0.1, 512 draws) for larger cut-offs
        assert 0 < np.mean(ks.min(axis=(1, 2)) < -1e-6) < 0.2
        # anisotropic draws exist (not transpose-symmetric)
        assert np.mean(np.abs(ks - ks.transpose(0, 2, 1)).max(axis=(1, 2)) > 1e-4) > 0.1
    sinc = np.asarray(jax.vmap(lambda k: kernels.sample_final_sinc_kernel(k, 15, realsr_spec.kernel2.kernel_sizes,
                                                                          0.8))(keys))
    np.testing.assert_allclose(sinc.sum(axis=(1, 2)), 1.0, atol=1e-5)
    pulse = np.all(sinc == np.asarray(kernels.delta_kernel(15)), axis=(1, 2))
    assert abs(pulse.mean() - 0.2) < 0.06


def test_kernel_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="odd"):
        kernels.BlurKernelSpec(21, (4,), (1, 0, 0, 0, 0, 0), 0.1, (0.2, 3.0))
    with pytest.raises(ValueError, match="kernel_prob"):
        kernels.BlurKernelSpec(21, (7,), (1, 0), 0.1, (0.2, 3.0))
    with pytest.raises(ValueError, match="grid size"):
        kernels.BlurKernelSpec(20, (7,), (1, 0, 0, 0, 0, 0), 0.1, (0.2, 3.0))


# ------------------------------------------------------------------------------------------- resample


def _torch_interp(x_hwc, mode, size=None, scale=None):
    t = torch.from_numpy(np.array(x_hwc, np.float32)).permute(2, 0, 1)[None]
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(t, size=size, scale_factor=scale, mode=mode, **kwargs)
    return out[0].permute(1, 2, 0).numpy()


def _torch_filter(x_hwc, kernel):
    t = torch.from_numpy(np.array(x_hwc, np.float32)).permute(2, 0, 1)[None]
    p = kernel.shape[0] // 2
    w = torch.from_numpy(np.array(kernel, np.float32))[None, None].repeat(t.shape[1], 1, 1, 1)
    out = F.conv2d(F.pad(t, (p, p, p, p), mode="reflect"), w, groups=t.shape[1])
    return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", range(3))
@pytest.mark.parametrize(
    "n_in,scale,size",
    [((23, 17), 0.37, None), ((30, 30), 1.43, None), ((40, 33), 1.0, None), ((37, 29), None, (11, 19)),
     ((12, 9), None, (25, 31)), ((50, 50), None, (50, 50))],
)
def test_resize_valid_matches_torch(mode, n_in, scale, size):
    """A traced-size resize on a 64 x 64 canvas with garbage outside the valid region equals F.interpolate."""
    rng = np.random.default_rng(0)
    img = rng.random(n_in + (3,)).astype(np.float32)
    canvas = rng.random((64, 64, 3)).astype(np.float32) * 100  # garbage outside the valid region
    canvas[: n_in[0], : n_in[1]] = img
    want = _torch_interp(img, MODES[mode], size=size, scale=scale)
    n_out = want.shape[:2]
    fn = jax.jit(lambda x, m, a, b: resample.resize_valid(x, m, a, b, (64, 64), scale=scale))
    got = np.asarray(fn(jnp.asarray(canvas), mode, jnp.asarray(n_in), jnp.asarray(n_out)))
    np.testing.assert_allclose(got[: n_out[0], : n_out[1]], want, rtol=0, atol=2e-6)
    assert np.all(got[n_out[0]:] == 0) and np.all(got[:, n_out[1]:] == 0)


@pytest.mark.parametrize("valid,k", [((64, 64), 21), ((20, 13), 15), ((9, 40), 15), ((3, 5), 7)])
def test_filter2d_reflect_matches_torch(valid, k):
    rng = np.random.default_rng(1)
    img = rng.random(valid + (3,)).astype(np.float32)
    canvas = rng.random((64, 64, 3)).astype(np.float32) * 100
    canvas[: valid[0], : valid[1]] = img
    kernel = rng.random((k, k)).astype(np.float32)
    kernel /= kernel.sum()
    got = np.asarray(resample.filter2d_reflect(jnp.asarray(canvas), jnp.asarray(kernel), jnp.asarray(valid)))
    if k // 2 < min(valid):  # torch's reflect pad needs pad < size
        want = _torch_filter(img, kernel)
    else:  # repeated mirroring, checked against numpy's reflect mode
        p = k // 2
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")
        want = np.stack([sum(kernel[i, j] * padded[i:i + valid[0], j:j + valid[1], c]
                             for i in range(k) for j in range(k)) for c in range(3)], -1)
    np.testing.assert_allclose(got[: valid[0], : valid[1]], want, rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------------- noise


def test_gaussian_noise_statistics():
    img = jnp.full((96, 96, 3), 0.5, jnp.float32)
    color = np.asarray(noise.gaussian_noise(jax.random.key(0), img, 10.0, False)) - 0.5
    gray = np.asarray(noise.gaussian_noise(jax.random.key(1), img, 10.0, True)) - 0.5
    assert abs(color.std() * 255 - 10.0) < 0.3 and abs(gray.std() * 255 - 10.0) < 0.4
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 0] == gray[..., 2])
    assert np.abs(color[..., 0] - color[..., 1]).max() > 0.05
    clipped = np.asarray(noise.gaussian_noise(jax.random.key(2), jnp.zeros((32, 32, 3)), 30.0, False))
    assert clipped.min() == 0.0 and clipped.max() <= 1.0


def test_poisson_noise_statistics_and_level_count():
    """Constant image 0.5 has one 8-bit level -> vals = 1 -> noise = scale * (Poisson(0.5) - 0.5) (var 0.5 s^2).

    The level count only looks at the valid region: garbage outside must not change vals."""
    scale = 0.1
    canvas = np.random.default_rng(0).random((128, 128, 3)).astype(np.float32)
    canvas[:96, :96] = 0.5
    out = np.asarray(noise.poisson_noise(jax.random.key(0), jnp.asarray(canvas), scale, False, (96, 96)))
    n = out[:96, :96] - 0.5
    assert abs(n.mean()) < 0.003
    assert abs(n.var() / (0.5 * scale**2) - 1) < 0.05
    # counting over the whole canvas instead would give vals = 256 and a 256x smaller variance
    whole = np.asarray(noise.poisson_noise(jax.random.key(0), jnp.asarray(canvas), scale, False))[:96, :96] - 0.5
    assert whole.var() < 0.1 * n.var()
    gray = np.asarray(noise.poisson_noise(jax.random.key(1), jnp.asarray(canvas), scale, True, (96, 96)))[:96, :96]
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 1] == gray[..., 2])


# ----------------------------------------------------------------------------------------------- JPEG


def _pillow_jpeg(img8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=quality, subsampling=2)  # 4:2:0, standard tables
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


LIBJPEG = dict(tables="ijg", chroma_upsampling="fancy", pad="edge")


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
@pytest.mark.parametrize("quality", [30, 50, 90])
def test_jpeg_close_to_pillow(name, quality):
    """PSNR between the JAX JPEG and Pillow (libjpeg-turbo, same quality, 4:2:0) on 128x128 photo crops.

    Measured (astronaut / coffee): libjpeg emulation (ijg tables, fancy upsampling, edge padding)
    q30 44.7 / 43.1 dB, q50 43.9 / 44.7, q90 46.1 / 45.5; the DiffJPEG convention used in Real-ESRGAN training
    (transposed float tables, nearest chroma upsampling) q30 34.8 / 35.8, q50 36.7 / 37.6, q90 41.0 / 39.2.
    For scale: Pillow's own JPEG is 30.8-37.5 dB from the original at these qualities. (Against OpenCV 4.14's
    ``imencode`` on a 200x180 crop the libjpeg emulation gave 44.9 / 46.5 / 47.3 dB at q30 / 50 / 90.)
    """
    img8 = _photo(name, 128)
    ref = _pillow_jpeg(img8, quality) / 255.0
    x = jnp.asarray(img8, jnp.float32) / 255.0
    libjpeg = np.round(np.asarray(jpeg.jpeg_roundtrip(x, quality, **LIBJPEG)) * 255) / 255
    diffjpeg = np.asarray(jpeg.jpeg_roundtrip(x, quality))
    assert _psnr(libjpeg, ref) > 42.0
    assert _psnr(diffjpeg, ref) > 33.0
    # and it really compresses: as far from the original as Pillow is (within 1 dB)
    assert abs(_psnr(libjpeg, img8 / 255.0) - _psnr(ref, img8 / 255.0)) < 1.0


def test_jpeg_quality_100_near_lossless():
    """q=100: every table entry is 1 (ijg) or floored at 0.01 (DiffJPEG, where the reference divides by zero).

    What remains is 4:2:0 chroma subsampling: measured RGB PSNR to the original 43.5 (ijg) / 43.3 (DiffJPEG) dB on
    the astronaut crop (Pillow: 43.0), and the luma channel alone is much closer."""
    img8 = _photo("astronaut", 128)
    x = jnp.asarray(img8, jnp.float32) / 255.0
    luma, chroma = jpeg.quality_tables(100, "ijg")
    assert np.all(np.asarray(luma) == 1) and np.all(np.asarray(chroma) == 1)
    for kwargs in (LIBJPEG, {}):
        out = np.asarray(jpeg.jpeg_roundtrip(x, 100.0, **kwargs))
        assert np.all(np.isfinite(out))
        assert _psnr(out, img8 / 255.0) > 40.0
        y = lambda im: im @ np.array([0.299, 0.587, 0.114])
        assert _psnr(y(out), y(img8 / 255.0)) > 50.0
        assert _psnr(out, img8 / 255.0) > _psnr(np.asarray(jpeg.jpeg_roundtrip(x, 90.0, **kwargs)), img8 / 255.0)


def test_jpeg_tables():
    luma, chroma = jpeg.quality_tables(50, "ijg")
    np.testing.assert_array_equal(np.asarray(luma), jpeg.LUMA_TABLE)
    np.testing.assert_array_equal(np.asarray(chroma), jpeg.CHROMA_TABLE)
    luma, _ = jpeg.quality_tables(30, "ijg")  # libjpeg: scale 5000 // 30 = 166, (16 * 166 + 50) // 100 = 27
    assert float(luma[0, 0]) == 27.0 and float(luma[7, 7]) == min(255.0, (99 * 166 + 50) // 100)
    luma, chroma = jpeg.quality_tables(30.0, "diffjpeg")  # basicsr DiffJPEG: transposed, factor 5000/30/100
    np.testing.assert_allclose(np.asarray(luma), jpeg.LUMA_TABLE.T * (5000 / 30 / 100), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(chroma), jpeg.CHROMA_TABLE.T * (5000 / 30 / 100), rtol=1e-6)
    with pytest.raises(ValueError, match="tables"):
        jpeg.quality_tables(50, "mozjpeg")


def test_jpeg_batched_canvas_and_padding():
    """Per-sample qualities in a batch; a valid region on a canvas equals the cropped image (pad from its edge)."""
    img = _photo("coffee", 64)[:45, :37] / np.float32(255)  # not a multiple of 16
    batch = jnp.stack([jnp.asarray(img)] * 2)
    out = np.asarray(jax.jit(jpeg.jpeg_compress)(batch, jnp.asarray([35.0, 80.0])))
    for i, q in enumerate((35.0, 80.0)):
        np.testing.assert_allclose(out[i], np.asarray(jpeg.jpeg_roundtrip(jnp.asarray(img), q)), atol=1e-6)
    assert _psnr(out[0], out[1]) < 45
    canvas = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    canvas[:45, :37] = img
    for pad in ("zeros", "edge"):
        direct = np.asarray(jpeg.jpeg_roundtrip(jnp.asarray(img), 50.0, pad=pad))
        on_canvas = np.asarray(jpeg.jpeg_roundtrip(jnp.asarray(canvas), 50.0, pad=pad, valid_hw=jnp.asarray([45, 37])))
        np.testing.assert_allclose(on_canvas[:45, :37], direct, atol=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        jpeg.jpeg_roundtrip(jnp.zeros((16, 16)), 50)


# --------------------------------------------------------------------------------- Real-ESRGAN pipeline


def test_config_values_match_official(realsr_spec):
    """Spot-check the ConfigDict against configs/realsr_swinunet_realesrgan256_journal.yaml."""
    s = realsr_spec
    assert s.sf == 4
    assert s.kernel1.grid_size == 21 and s.kernel1.kernel_sizes == tuple(range(3, 21, 2))
    assert s.kernel1.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and s.kernel1.sinc_prob == 0.1
    assert s.kernel1.sigma_range == (0.2, 3.0) and s.kernel2.sigma_range == (0.2, 1.5)
    assert s.kernel2.grid_size == 15 and s.kernel2.kernel_sizes == (3, 5, 7, 9, 11, 13)
    assert s.final_sinc_prob == 0.8
    assert s.stage1.resize_prob == (0.2, 0.7, 0.1) and s.stage1.resize_range == (0.15, 1.5)
    assert s.stage1.noise_range == (1.0, 30.0) and s.stage1.poisson_scale_range == (0.05, 3.0)
    assert s.stage2.resize_prob == (0.3, 0.4, 0.3) and s.stage2.resize_range == (0.3, 1.2)
    assert s.stage2.noise_range == (1.0, 25.0) and s.stage2.poisson_scale_range == (0.05, 2.5)
    assert s.stage1.jpeg_range == s.stage2.jpeg_range == (30.0, 95.0)
    assert (s.second_order_prob, s.second_blur_prob) == (0.5, 0.8)
    assert pipeline.RealESRGANSpec.from_config(_config("realsr_x2")).sf == 2
    assert pipeline.RealESRGANSpec.from_config(_config("imagenet_test")).second_order_prob == 0.0
    with pytest.raises(ValueError, match="unknown degradation config"):
        _config("realsr_x8")
    bad = _config("realsr_x4")
    bad.resize_prob = (0.5, 0.5)
    with pytest.raises(ValueError, match="resize_prob"):
        pipeline.RealESRGANSpec.from_config(bad)
    with pytest.raises(ValueError, match="too small"):
        s.check_input((8, 64))
    bad = _config("realsr_x4")
    bad.jpeg_range2 = (30.0, 120.0)
    with pytest.raises(ValueError, match="jpeg_range"):
        pipeline.RealESRGANSpec.from_config(bad)
    bad = _config("realsr_x4")
    bad.jpeg_tables = "mozjpeg"
    with pytest.raises(ValueError, match="jpeg_tables"):
        pipeline.RealESRGANSpec.from_config(bad)


def test_parameter_distributions(realsr_spec):
    """Per-sample draws follow the official probabilities and ranges (4000 samples)."""
    keys = jax.random.split(jax.random.key(7), 4000)
    p = jax.jit(jax.vmap(lambda k: pipeline.sample_realesrgan_params(k, realsr_spec, (256, 256))))(keys)
    p = _numpy_params(p)
    for flag, prob in (("second_order", 0.5), ("second_blur", 0.8), ("resize_first", 0.5)):
        assert abs(p[flag].mean() - prob) < 0.03, flag
    for i, stage in enumerate((realsr_spec.stage1, realsr_spec.stage2)):
        s = p["scale"][:, i]
        up, down, keep = (s > 1).mean(), (s < 1).mean(), (s == 1).mean()
        np.testing.assert_allclose([up, down, keep], stage.resize_prob, atol=0.03)
        assert s.min() >= stage.resize_range[0] and s.max() <= stage.resize_range[1]
        assert set(np.unique(p["mode"][:, i])) == {0, 1, 2}
        assert abs(p["gaussian"][:, i].mean() - 0.5) < 0.03 and abs(p["gray"][:, i].mean() - 0.4) < 0.03
        assert p["sigma"][:, i].min() >= stage.noise_range[0] and p["sigma"][:, i].max() <= stage.noise_range[1]
        assert p["quality"][:, i].min() >= 30 and p["quality"][:, i].max() <= 95
    np.testing.assert_array_equal(p["size"][:, 0], np.floor(256 * p["scale"][:, :1]).astype(int).repeat(2, 1))
    np.testing.assert_array_equal(p["size"][:, 1], np.floor(64 * p["scale"][:, 1:]).astype(int).repeat(2, 1))
    np.testing.assert_allclose(p["kernels"].sum(axis=(2, 3)), 1.0, atol=1e-5)


def _noise_free(spec):
    quiet = lambda st: pipeline.StageSpec(st.resize_prob, st.resize_range, 1.0, (0.0, 0.0), st.poisson_scale_range,
                                          st.gray_noise_prob, st.jpeg_range)
    return pipeline.RealESRGANSpec(
        spec.sf, spec.kernel1, spec.kernel2, spec.final_sinc_prob, quiet(spec.stage1), quiet(spec.stage2),
        spec.second_order_prob, spec.second_blur_prob, spec.final_resize_first_prob)


def _torch_replay(hq, p, spec):
    """The official chain (trainer.prepare_data) with torch resizes / blurs and the drawn parameters; the JPEG
    steps call the (separately tested) JAX JPEG on the exact-size image; noise is off (sigma 0)."""
    def jpg(x, q):
        return np.asarray(jpeg.jpeg_roundtrip(jnp.asarray(np.clip(x, 0, 1)), float(q)))

    h, w, _ = hq.shape
    g2 = spec.kernel2.grid_size
    c = (p["kernels"].shape[-1] - g2) // 2
    kernel2 = p["kernels"][1][c:c + g2, c:c + g2] if c else p["kernels"][1]
    x = _torch_filter(hq, p["kernels"][0])
    x = np.clip(_torch_interp(x, MODES[p["mode"][0]], scale=float(p["scale"][0])), 0, 1)
    x = jpg(x, p["quality"][0])
    if p["second_order"]:
        if p["second_blur"]:
            x = _torch_filter(x, kernel2)
        size = (int(h / spec.sf * float(p["scale"][1])), int(w / spec.sf * float(p["scale"][1])))
        x = np.clip(_torch_interp(x, MODES[p["mode"][1]], size=size), 0, 1)
    final = (h // spec.sf, w // spec.sf)
    if p["resize_first"]:
        x = _torch_filter(_torch_interp(x, MODES[p["final_mode"]], size=final), p["sinc"])
        x = jpg(x, p["final_quality"])
    else:
        x = jpg(x, p["final_quality"])
        x = _torch_filter(_torch_interp(x, MODES[p["final_mode"]], size=final), p["sinc"])
    return np.clip(np.round(x * 255), 0, 255) / 255


def test_pipeline_replays_official_chain(realsr_spec):
    """The static-shape pipeline equals the variable-size official chain for the same draws (noise off).

    Keys are picked so that all four (second order, resize-first) branch combinations occur. Measured over 64
    keys: the 8-bit outputs were identical (max difference 6e-8); up to 3 rounding flips of 1/255 are allowed."""
    spec = _noise_free(realsr_spec)
    hq = _photo("astronaut", 64).astype(np.float32) / 255
    keys = jax.random.split(jax.random.key(11), 64)
    params = jax.jit(jax.vmap(lambda k: pipeline.sample_realesrgan_params(k, spec, hq.shape[:2])))(keys)
    flags = np.asarray(params["second_order"]) * 2 + np.asarray(params["resize_first"])
    chosen = [int(np.argmax(flags == f)) for f in range(4)]
    assert all(flags[i] == f for f, i in enumerate(chosen)), "need keys covering every branch"
    chosen += [4, 5, 6, 7]
    sub = jax.tree_util.tree_map(lambda a: a[np.asarray(chosen)], params)
    got = np.asarray(jax.jit(jax.vmap(lambda q: pipeline.apply_realesrgan(q, jnp.asarray(hq), spec)))(sub))
    for j in range(len(chosen)):
        pj = {k: v[j] for k, v in _numpy_params(sub).items()}
        want = _torch_replay(hq, pj, spec)
        assert got[j].shape == want.shape == (16, 16, 3)
        diff = np.abs(got[j] - want)
        assert diff.max() <= 1 / 255 + 1e-6 and np.sum(diff > 1e-6) <= 3, (chosen[j], diff.max())


@pytest.fixture(scope="module")
def degrade_jit():
    return jax.jit(pipeline.realesrgan_degrade, static_argnums=2)


def test_pipeline_batch_jit_per_sample_keys(realsr_spec, degrade_jit):
    """Jitted batch in [-1, 1]: shape (B, H/4, W/4, 3), values on the 8-bit grid, same key -> same output,
    other key -> other output, and the samples of one batch get different degradations."""
    hq = np.stack([_photo("astronaut", 64), _photo("coffee", 64)] * 2).astype(np.float32) / 127.5 - 1
    hq = jnp.asarray(hq)
    a = np.asarray(degrade_jit(jax.random.key(0), hq, realsr_spec))
    b = np.asarray(degrade_jit(jax.random.key(0), hq, realsr_spec))
    c = np.asarray(degrade_jit(jax.random.key(1), hq, realsr_spec))
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.05
    assert np.abs(a[0] - a[2]).max() > 0.05  # same image, different per-sample parameters
    levels = (a + 1) * 127.5
    assert a.min() >= -1 and a.max() <= 1 + 1e-6
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_pipeline_ranges_over_many_keys(realsr_spec, degrade_jit):
    hq = jnp.asarray(np.stack([_photo("coffee", 64)] * 4).astype(np.float32) / 127.5 - 1)
    for seed in range(6):
        out = np.asarray(degrade_jit(jax.random.key(100 + seed), hq, realsr_spec))
        assert out.shape == (4, 16, 16, 3) and np.all(np.isfinite(out))
        assert out.min() >= -1 and out.max() <= 1 + 1e-6
        levels = (out + 1) * 127.5
        assert np.abs(levels - np.round(levels)).max() < 1e-4
    with pytest.raises(ValueError, match="batch"):
        pipeline.realesrgan_degrade(jax.random.key(0), hq[0], realsr_spec)
    with pytest.raises(ValueError, match="float"):
        pipeline.realesrgan_degrade(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.uint8), realsr_spec)


def test_bicubic_degrade():
    """bicsr LQ = MATLAB imresize x1/4 of the HQ; linear, so [-1, 1] and [0, 1] inputs agree."""
    x = jnp.asarray(_photo("astronaut", 64)[None].astype(np.float32) / 255)
    lq = pipeline.bicubic_degrade(x * 2 - 1, sf=4)
    assert lq.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(lq), np.asarray(resize_lib.imresize_matlab(x, 0.25)) * 2 - 1, atol=1e-5)


# ----------------------------------------------------------------------------------------------- face


@pytest.fixture(scope="module")
def face_spec():
    return face.FaceSpec.from_config(_config("faceir"))


def test_face_config_and_params(face_spec):
    s = face_spec
    assert s.kernel.grid_size == 41 and s.kernel.kernel_prob == (0.5, 0.5, 0, 0, 0, 0)
    assert (s.kernel.sigma_range, s.downsample_range) == ((0.1, 15.0), (0.8, 32.0))
    assert (s.noise_range, s.jpeg_range, s.gray_prob) == ((0.0, 20.0), (30.0, 100.0), 0.01)
    keys = jax.random.split(jax.random.key(0), 2000)
    p = _numpy_params(jax.jit(jax.vmap(lambda k: face.sample_face_params(k, s, (512, 512))))(keys))
    assert 0.8 <= p["scale"].min() and p["scale"].max() <= 32
    np.testing.assert_array_equal(p["size"][:, 0], np.floor(512 / p["scale"]).astype(int))
    assert set(np.unique(p["quality"])) <= set(range(30, 100)) and p["quality"].max() >= 98
    np.testing.assert_allclose(p["kernel"].sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_face_replay_and_batch(face_spec):
    """Noise-free draws replayed with torch (bilinear = cv2 INTER_LINEAR, reflect-101 blur) and the JAX libjpeg
    emulation on the exact-size image; plus the batched [-1, 1] entry point.

    The last bilinear upsampling of 8-bit values lands on exact .5 ties of the final rounding, so a few values
    differ by 1/255 (measured over 24 keys: at most 2% of the values, never more than 1/255)."""
    spec = face.FaceSpec(face_spec.kernel, face_spec.downsample_range, None, face_spec.jpeg_range, 0.0)
    gt = _photo("coffee", 64).astype(np.float32) / 255
    keys = jax.random.split(jax.random.key(5), 3)
    params = jax.jit(jax.vmap(lambda k: face.sample_face_params(k, spec, (64, 64))))(keys)
    apply = jax.jit(jax.vmap(lambda q: face.apply_face(q, jnp.asarray(gt), spec)))
    got, gt_same = (np.asarray(a) for a in apply(params))
    np.testing.assert_array_equal(gt_same, np.broadcast_to(gt, gt_same.shape))
    for j in range(3):
        p = {k: v[j] for k, v in _numpy_params(params).items()}
        x = _torch_filter(gt, p["kernel"])
        x = _torch_interp(x, "bilinear", size=tuple(int(v) for v in p["size"]))
        x = np.round(np.clip(x, 0, 1) * 255) / 255
        x = np.round(np.asarray(jpeg.jpeg_roundtrip(jnp.asarray(x, jnp.float32), float(p["quality"]), **LIBJPEG)) * 255)
        x = _torch_interp((x / 255).astype(np.float32), "bilinear", size=(64, 64))
        want = np.clip(np.round(x * 255), 0, 255) / 255
        diff = np.abs(got[j] - want)
        assert diff.max() <= 1 / 255 + 1e-6 and np.mean(diff > 1e-6) < 0.05

    # forced gray: LQ and GT become gray (cv2 BGR2GRAY weights)
    lq_g, gt_g = (np.asarray(a) for a in apply(dict(params, gray=jnp.ones(3, bool))))
    for im in (lq_g, gt_g):
        np.testing.assert_allclose(im[..., 0], im[..., 2], atol=1e-6)
    np.testing.assert_allclose(gt_g[0, ..., 0], gt @ np.array([0.299, 0.587, 0.114]), atol=1e-5)

    batch = jnp.asarray(np.stack([gt, gt]) * 2 - 1)
    lq, gt_out = jax.jit(face.face_degrade, static_argnums=2)(jax.random.key(0), batch, face_spec)
    lq = np.asarray(lq)
    assert lq.shape == (2, 64, 64, 3) and lq.min() >= -1 and lq.max() <= 1 + 1e-6
    np.testing.assert_allclose((lq + 1) * 127.5, np.round((lq + 1) * 127.5), atol=1e-4)
    assert np.abs(lq[0] - lq[1]).max() > 0.02


# ---------------------------------------------------------------------------------------------- masks


@pytest.fixture(scope="module")
def mask_spec():
    return masks.LamaMaskSpec.from_config(_config("inpaint"))


def test_mask_generators_match_official_statistics(mask_spec):
    """Mean masked fraction of each generator on 256x256 vs the official ``datapipe/masks.py`` (run once with
    OpenCV 4.14, NumPy seeds 100-102: irregular 0.462 over 2400 masks, box 0.254 and outpainting 0.277 over 400).
    Measured here with 400 masks each: 0.46 / 0.25 / 0.27. Tolerance 0.04 (about 3.5 standard errors)."""
    assert mask_spec == masks.LamaMaskSpec()
    official = {"irregular_mask": 0.462, "box_mask": 0.254, "outpainting_mask": 0.277}
    keys = jax.random.split(jax.random.key(2), 400)
    for name, mean in official.items():
        gen = getattr(masks, name)
        m = np.asarray(jax.jit(jax.vmap(lambda k: gen(k, (256, 256), mask_spec)))(keys))
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert abs(m.mean() - mean) < 0.04, (name, m.mean())
        assert np.all(m.reshape(400, -1).max(axis=1) == 1)  # never empty
        if name == "box_mask":  # margins are respected
            assert m[:, :10].max() == 0 and m[:, -10:].max() == 0 and m[:, :, :10].max() == 0
        if name == "outpainting_mask":  # always touches the border
            border = np.maximum.reduce([m[:, 0].max(1), m[:, -1].max(1), m[:, :, 0].max(1), m[:, :, -1].max(1)])
            assert np.all(border == 1)


def test_lama_masks_mixture_and_inputs(mask_spec):
    make = jax.jit(masks.lama_masks, static_argnums=(1, 2, 3))
    m = np.asarray(make(jax.random.key(0), 6, (256, 256), mask_spec))
    assert m.shape == (6, 256, 256) and set(np.unique(m)) <= {0.0, 1.0}
    assert len({m[i].tobytes() for i in range(6)}) == 6
    again = np.asarray(make(jax.random.key(0), 6, (256, 256), mask_spec))
    np.testing.assert_array_equal(m, again)
    hq = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, 256, 256, 3)).astype(np.float32))
    lq, mask_pm = masks.inpainting_inputs(hq, jnp.asarray(m))
    lq, mask_pm = np.asarray(lq), np.asarray(mask_pm)
    assert mask_pm.shape == (6, 256, 256, 1) and set(np.unique(mask_pm)) <= {-1.0, 1.0}
    assert np.all(lq[m == 1] == -1) and np.all(lq[m == 0] == np.asarray(hq)[m == 0])
    with pytest.raises(ValueError, match="room for boxes"):
        masks.lama_mask(jax.random.key(0), (40, 40), mask_spec)
