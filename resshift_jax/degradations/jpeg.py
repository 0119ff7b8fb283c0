"""JPEG compression round trip (encode + decode) in JAX, as basicsr's ``DiffJPEG`` (non-differentiable mode).

Steps for an (H, W, 3) RGB image in [0, 1]: pad to a multiple of 16, scale to [0, 255], RGB -> YCbCr (JFIF,
offsets 0/128/128, no rounding), 4:2:0 chroma subsampling by 2x2 averaging, 8x8 orthonormal DCT of
``sample - 128``, quantisation ``round(coef / table)`` with the luminance / chrominance tables scaled by
quality, dequantisation, inverse DCT, chroma upsampling, YCbCr -> RGB, clamp to [0, 255], crop.

Two table conventions (``tables=``):

* ``"diffjpeg"`` (what ResShift / Real-ESRGAN train with): standard IJG tables **transposed** (a quirk of
  DiffJPEG), multiplied by the float factor ``5000/q/100`` (q < 50) or ``(200 - 2q)/100``, not rounded; the
  scaled table is floored at 0.01 so that q = 100 (factor 0, a division by zero in the reference) is
  near-lossless instead of NaN. Float qualities are allowed.
* ``"ijg"`` (libjpeg / Pillow / OpenCV ``jpeg_set_quality``): integer quality ``floor(q)``, integer scaling
  ``S = 5000 // q`` or ``200 - 2q``, table ``clip((std * S + 50) // 100, 1, 255)``, standard orientation.

Chroma upsampling ``"nearest"`` (DiffJPEG: pixel replication) or ``"fancy"`` (libjpeg's default triangle filter
= bilinear x2 with half-pixel centres and replicated edges). Padding ``"zeros"`` (DiffJPEG) or ``"edge"``
(libjpeg replicates the last row / column). Differences to a real codec that remain: libjpeg rounds YCbCr
and the decoded samples to integers and uses integer DCTs; measured agreement with Pillow is in
``tests/test_degradations.py``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# ITU-T T.81 Annex K tables K.1 / K.2, rows = vertical frequency.
LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=np.float32)
CHROMA_TABLE = np.full((8, 8), 99.0, dtype=np.float32)
CHROMA_TABLE[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])

RGB_TO_YCBCR = np.array([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
], dtype=np.float32)
YCBCR_TO_RGB = np.array([
    [1.0, 0.0, 1.402],
    [1.0, -0.344136, -0.714136],
    [1.0, 1.772, 0.0],
], dtype=np.float32)
_CHROMA_SHIFT = np.array([0.0, 128.0, 128.0], dtype=np.float32)

TABLE_MODES = ("diffjpeg", "ijg")
_HI = jax.lax.Precision.HIGHEST


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II: D[u, x] = c(u)/2 cos((2x+1) u pi / 16), c(0) = 1/sqrt(2)."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    d = 0.5 * np.cos((2 * x + 1) * u * math.pi / 16)
    d[0] *= 1 / math.sqrt(2)
    return d.astype(np.float32)


_DCT = _dct_matrix()


def quality_tables(quality, tables: str = "diffjpeg") -> tuple[jax.Array, jax.Array]:
    """(luma, chroma) 8x8 quantisation tables for a scalar quality in [1, 100] (traced ok)."""
    q = jnp.asarray(quality, jnp.float32)
    if tables == "diffjpeg":
        factor = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q) / 100.0
        luma = jnp.maximum(jnp.asarray(LUMA_TABLE.T) * factor, 0.01)
        chroma = jnp.maximum(jnp.asarray(CHROMA_TABLE.T) * factor, 0.01)
        return luma, chroma
    if tables == "ijg":
        qi = jnp.clip(jnp.floor(q).astype(jnp.int32), 1, 100)
        scale = jnp.where(qi < 50, 5000 // qi, 200 - 2 * qi)
        def scaled(table):
            t = (jnp.asarray(table, jnp.int32) * scale + 50) // 100
            return jnp.clip(t, 1, 255).astype(jnp.float32)
        return scaled(LUMA_TABLE), scaled(CHROMA_TABLE)
    raise ValueError(f"tables must be one of {TABLE_MODES}, got {tables!r}")


def _quantise_plane(plane: jax.Array, table: jax.Array) -> jax.Array:
    """8x8 block DCT, round(coef / table) * table, inverse DCT of an (h, w) plane (h, w multiples of 8)."""
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3) - 128.0
    d = jnp.asarray(_DCT)
    coef = jnp.einsum("ux,abxy,vy->abuv", d, blocks, d, precision=_HI)
    coef = jnp.round(coef / table) * table
    rec = jnp.einsum("ux,abuv,vy->abxy", d, coef, d, precision=_HI) + 128.0
    return rec.transpose(0, 2, 1, 3).reshape(h, w)


def _fancy_upsample(plane: jax.Array) -> jax.Array:
    """x2 upsampling with weights 3/4, 1/4 (half-pixel centres, edge replication) along both axes."""
    def along(x, axis):
        n = x.shape[axis]
        prev = jnp.take(x, jnp.maximum(jnp.arange(n) - 1, 0), axis=axis)
        nxt = jnp.take(x, jnp.minimum(jnp.arange(n) + 1, n - 1), axis=axis)
        even = 0.75 * x + 0.25 * prev
        odd = 0.75 * x + 0.25 * nxt
        out = jnp.stack([even, odd], axis=axis + 1)
        shape = list(x.shape)
        shape[axis] = 2 * n
        return out.reshape(shape)
    return along(along(plane, 0), 1)


def _pad16(image: jax.Array, valid_hw, pad: str) -> jax.Array:
    h, w, _ = image.shape
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    n_h, n_w = (h, w) if valid_hw is None else valid_hw
    rows = jnp.arange(hp)
    cols = jnp.arange(wp)
    if pad == "edge":
        return image[jnp.minimum(rows, n_h - 1)][:, jnp.minimum(cols, n_w - 1)]
    if pad == "zeros":
        canvas = jnp.zeros((hp, wp, image.shape[-1]), image.dtype).at[:h, :w].set(image)
        keep = (rows < n_h)[:, None] & (cols < n_w)[None, :]
        return jnp.where(keep[..., None], canvas, 0.0)
    raise ValueError(f"pad must be 'zeros' or 'edge', got {pad!r}")


def jpeg_roundtrip(
    image: jax.Array,
    quality,
    *,
    tables: str = "diffjpeg",
    chroma_upsampling: str = "nearest",
    pad: str = "zeros",
    valid_hw=None,
) -> jax.Array:
    """JPEG-compress and decode one (H, W, 3) RGB image in [0, 1]; returns (H, W, 3) in [0, 1].

    quality: scalar in [1, 100] (traced ok). valid_hw: traced (n_h, n_w) valid region of a canvas; padding
    to a multiple of 16 starts at the valid edge (as if the image had that size). See the module docstring.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"jpeg_roundtrip expects one (H, W, 3) RGB image, got shape {image.shape}")
    if chroma_upsampling not in ("nearest", "fancy"):
        raise ValueError(f"chroma_upsampling must be 'nearest' or 'fancy', got {chroma_upsampling!r}")
    h, w, _ = image.shape
    x = _pad16(image.astype(jnp.float32), valid_hw, pad) * 255.0
    ycc = jnp.einsum("hwc,dc->hwd", x, jnp.asarray(RGB_TO_YCBCR), precision=_HI) + _CHROMA_SHIFT
    hp, wp = x.shape[:2]
    luma_table, chroma_table = quality_tables(quality, tables)
    y = _quantise_plane(ycc[..., 0], luma_table)
    chroma = ycc[..., 1:].reshape(hp // 2, 2, wp // 2, 2, 2).mean(axis=(1, 3))
    planes = []
    for ch in range(2):
        rec = _quantise_plane(chroma[..., ch], chroma_table)
        if chroma_upsampling == "nearest":
            rec = jnp.repeat(jnp.repeat(rec, 2, axis=0), 2, axis=1)
        else:
            rec = _fancy_upsample(rec)
        planes.append(rec)
    ycc_rec = jnp.stack([y] + planes, axis=-1) - _CHROMA_SHIFT
    rgb = jnp.einsum("hwd,cd->hwc", ycc_rec, jnp.asarray(YCBCR_TO_RGB), precision=_HI)
    rgb = jnp.clip(rgb, 0.0, 255.0) / 255.0
    return rgb[:h, :w].astype(image.dtype)


def jpeg_compress(
    images: jax.Array,
    quality,
    *,
    tables: str = "diffjpeg",
    chroma_upsampling: str = "nearest",
    pad: str = "zeros",
) -> jax.Array:
    """Batched :func:`jpeg_roundtrip`: images (B, H, W, 3) in [0, 1], quality scalar or (B,). Returns (B, H, W, 3)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"jpeg_compress expects (B, H, W, 3) RGB images, got shape {images.shape}")
    q = jnp.broadcast_to(jnp.asarray(quality, jnp.float32), images.shape[:1])
    fn = lambda im, qq: jpeg_roundtrip(im, qq, tables=tables, chroma_upsampling=chroma_upsampling, pad=pad)
    return jax.vmap(fn)(images, q)
