"""Degradation operators: official numbers (``deqir/degradations``), a float64 transcription of the
official SVD code, jit / vmap use, errors, and properties on a real photo."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import skimage.transform

from deqir_fixture_utils import operator_from_degradations
from deqir_jax import operators as ops

EPS32 = float(np.finfo(np.float32).eps)
SEPARABLE_CLASSES = ("SRConv", "Deblurring", "Deblurring2D")


# --------------------------------------------------------------------------------------------------
# Fixture helpers


@pytest.fixture(scope="module")
def fx(load_fixture):
    return load_fixture("deqir/degradations")


def _nchw_to_nhwc(a) -> np.ndarray:
    return np.moveaxis(np.asarray(a), 1, -1)


def _nhwc_to_nchw(a) -> np.ndarray:
    return np.moveaxis(np.asarray(a), -1, 1)


def _atol(meta: dict) -> float:
    match = re.search(r"atol\s*([0-9.]+(?:e-?[0-9]+)?)", meta["tolerance"])
    assert match, f"no atol in {meta['tolerance']!r}"
    return float(match.group(1))


def _operator_keys(fx) -> list[str]:
    keys = list(fx.meta["operators"])
    assert keys, "degradations sidecar lists no operator"
    return keys


@pytest.fixture(scope="module")
def fixture_ops(fx):
    return {key: operator_from_degradations(fx, key) for key in fx.meta["operators"]}


@jax.jit
def _apply_all(op, x, y):
    """Every public map of ``op``, with the operator passed as a jit argument."""
    return {
        "A_x": op.A(x),
        "ApA_x": op.project(x),
        "ApA_lit": op.A_pinv(op.A(x)),
        "null_x": op.null(x),
        "Ap_y": op.A_pinv(y),
        "At_y": op.At(y),
    }


def _maxabs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --------------------------------------------------------------------------------------------------
# Official numbers


def test_every_fixture_operator_matches_official(fx, fixture_ops):
    atol = _atol(fx.meta)
    x = jnp.asarray(_nchw_to_nhwc(fx["x"]))
    report = {}
    for key in _operator_keys(fx):
        info, op = fx.meta["operators"][key], fixture_ops[key]
        assert op.y_dim == info["y_dim"], key
        if _repeated_subspace_projectors(key, info, fx) is not None:
            # the official products depend on the SVD basis here: singular values only, the rest is
            # checked on basis-free inputs in test_separable_operators_match_float64_official_code
            np.testing.assert_allclose(np.asarray(op.singulars()), fx[f"{key}/singulars"], rtol=0, atol=atol)
            report[key] = {"singulars only (repeated 1-D singular values)": 0.0}
            continue
        y_rand = ops.official_vector_to_y(op, jnp.asarray(fx[f"{key}/y_rand"]))
        out = _apply_all(op, x, y_rand)
        a_x = np.asarray(ops.y_to_official_vector(op, out["A_x"]))
        errs = {
            "A_x": _maxabs(a_x, fx[f"{key}/A_x"]),
            "At_y": _maxabs(_nhwc_to_nchw(out["At_y"]), fx[f"{key}/At_y"]),
            "singulars": _maxabs(op.singulars(), fx[f"{key}/singulars"]),
        }
        assert np.asarray(op.singulars()).shape == fx[f"{key}/singulars"].shape, key
        for name, err in errs.items():
            assert err <= atol, f"{key}/{name}: max abs error {err:.3g} > {atol}"
        # The official float32 projection of the deblurring operators is only idempotent to
        # `idempotence_err_max` (the sidecar's measure of its own rounding noise); ours is exact to ~1e-6.
        p_tol = atol + info["idempotence_err_max"]
        for name, mine in (("ApA_x", out["ApA_x"]), ("ApA_x", out["ApA_lit"]), ("null_x", out["null_x"])):
            err = _maxabs(_nhwc_to_nchw(mine), fx[f"{key}/{name}"])
            assert err <= p_tol, f"{key}/{name}: max abs error {err:.3g} > {p_tol:.3g}"
            errs[name] = max(err, errs.get(name, 0.0))
        # A_pinv divides by singular values down to ~1e-3: the official float32 result carries a
        # rounding error of order eps * cond * sqrt(y_dim) * |A_pinv y| (about 7e-5 relative for deblur).
        ref = fx[f"{key}/Ap_y"]
        s = np.asarray(fx[f"{key}/singulars"], np.float64)
        cond = s.max() / s[s > 0].min()
        ap_tol = atol + EPS32 * cond * np.sqrt(info["y_dim"]) * np.abs(ref).max()
        errs["Ap_y"] = _maxabs(_nhwc_to_nchw(out["Ap_y"]), ref)
        assert errs["Ap_y"] <= ap_tol, f"{key}/Ap_y: max abs error {errs['Ap_y']:.3g} > {ap_tol:.3g}"
        report[key] = errs
    print("\nmax abs error vs official fixture:")
    for key, errs in report.items():
        print(f"  {key:24s} " + " ".join(f"{k}={v:.2g}" for k, v in errs.items()))


def test_kernels_and_1d_matrices_match_official(fx):
    """The port's kernel builders reproduce the stored kernels (sizes and sigmas from the sidecar, else the
    stored kernel's length), and its 1-D matrices the official ``A_small_dense`` (the row matrix, size H)."""
    atol = _atol(fx.meta)
    n = fx["x"].shape[-2]
    checked = 0
    for key, info in fx.meta["operators"].items():
        cls, params = info["class"], info["params"]
        if cls == "SRConv":
            kernel = ops.bicubic_kernel(params["stride"])
            mat = ops.strided_conv_matrix(kernel, n, params["stride"])
        elif cls == "Deblurring":
            size = params.get("kernel_size", fx[f"{key}/kernel"].shape[0])
            if "sigma" in params:
                kernel = ops.gaussian_taps(size, params["sigma"])
            else:
                kernel = ops.uniform_kernel(size)
            mat = ops.blur_matrix(kernel, n, official=True)
        elif cls == "Deblurring2D":
            for i in (1, 2):
                stored = fx[f"{key}/kernel{i}"]
                size = params.get("kernel_size", stored.shape[0])
                np.testing.assert_allclose(ops.gaussian_taps(size, params[f"sigma{i}"]), stored, atol=1e-7)
            checked += 1
            continue
        else:
            continue
        np.testing.assert_allclose(kernel, fx[f"{key}/kernel"], rtol=0, atol=1e-7, err_msg=key)
        if f"{key}/A_small_dense" in fx:
            np.testing.assert_allclose(mat, fx[f"{key}/A_small_dense"], rtol=0, atol=1e-7, err_msg=key)
            s = np.linalg.svd(mat.astype(np.float64), compute_uv=False)
            s[s < ops.OFFICIAL_ZERO_THRESHOLD] = 0
            np.testing.assert_allclose(s, fx[f"{key}/singulars_small"], rtol=0, atol=atol, err_msg=key)
        checked += 1
    assert checked > 0, "no conv operator in the fixture"


def test_dropped_tap_quirk(fx):
    # Odd official kernels lose their last tap: every interior row of the 1-D blur sums to 1 - k[-1].
    kernel = ops.gaussian_taps(5, 10.0)
    mat = ops.blur_matrix(kernel, 16, official=True)
    np.testing.assert_allclose(mat[8, 6:10], kernel[:4])
    assert mat[8, 10] == 0.0
    full = ops.blur_matrix(kernel, 16, official=False)
    np.testing.assert_allclose(full[8, 6:11], kernel)


def test_nosvd_average_pooling_branch(fx):
    """``*_nosvd``: AdaptiveAvgPool2d + nearest replicate, the official non-SVD SR branch."""
    keys = [k[: -len("/A_x")] for k in fx.files if re.fullmatch(r"sr_averagepooling_x\d+_nosvd/A_x", k)]
    assert keys, "fixture has no *_nosvd entry"
    x = jnp.asarray(_nchw_to_nhwc(fx["x"]))
    for key in keys:
        ref = fx[f"{key}/A_x"]
        factor = fx["x"].shape[-1] // ref.shape[-1]
        op = ops.make_operator("sr_averagepooling", fx["x"].shape[-2:], factor=factor, channels=fx["x"].shape[1])
        assert _maxabs(_nhwc_to_nchw(op.A(x)), ref) <= _atol(fx.meta)
        assert _maxabs(_nhwc_to_nchw(op.project(x)), fx[f"{key}/ApA_x"]) <= _atol(fx.meta)


# --------------------------------------------------------------------------------------------------
# Float64 transcription of the official vector code (functions/svd_operators.py), for the separable
# operators whose float32 official outputs are too noisy for a sharp comparison.


def _official_blur_1d(kernel: np.ndarray, n: int) -> np.ndarray:
    mat = np.zeros((n, n))
    half = kernel.shape[0] // 2
    for i in range(n):
        for j in range(i - half, i + half):
            if 0 <= j < n:
                mat[i, j] = kernel[j - i + half]
    return mat


def _svd_factors(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, s, V) of a 1-D matrix in float64, full matrices, s descending (torch.svd(some=False) layout)."""
    u, s, vt = np.linalg.svd(mat.astype(np.float64))
    return u, s, vt.T


class _OfficialF64:
    """Deblurring / Deblurring2D / SRConv exactly as the official code, on flattened NCHW vectors, from the
    1-D SVD factors (U, s, V) of the row and column matrices (s before the 3e-2 truncation)."""

    def __init__(self, cls: str, rows: tuple, cols: tuple, perm: np.ndarray | None, channels: int):
        self.cls, self.c = cls, channels
        (self.u1, s1, self.v1), (self.u2, s2, self.v2) = rows, cols
        s1, s2 = np.array(s1, np.float64), np.array(s2, np.float64)
        s1[s1 < 3e-2] = 0
        s2[s2 < 3e-2] = 0
        self.h, self.w = self.v1.shape[0], self.v2.shape[0]
        self.hy, self.wy = self.u1.shape[0], self.u2.shape[0]
        prod = np.outer(s1, s2).reshape(-1)
        if cls == "SRConv":  # coefficients (i, j) of the top-left block, interleaved per channel
            self.sing = np.repeat(prod, channels)
        else:  # sorted, tiled channel-major (the official `repeat(1, 3)`)
            self.perm = perm
            self.sing = np.tile(prod[perm], channels)

    def _coef_order(self, mat):  # (C, a, b) -> official interleaved vector
        if self.cls == "SRConv":
            return mat[:, : self.hy, : self.wy].reshape(self.c, -1).T.reshape(-1)
        return mat.reshape(self.c, -1)[:, self.perm].T.reshape(-1)

    def _coef_unorder(self, vec, a, b):  # official interleaved vector -> (C, a, b)
        t = vec.reshape(-1, self.c)
        out = np.zeros((a * b, self.c))
        if self.cls == "SRConv":
            block = np.zeros((self.c, a, b))
            block[:, : self.hy, : self.wy] = t[: self.hy * self.wy].T.reshape(self.c, self.hy, self.wy)
            return block
        out[self.perm] = t
        return out.T.reshape(self.c, a, b)

    def A(self, x):
        coef = self._coef_order(np.einsum("ha,chw,wb->cab", self.v1, x.reshape(self.c, self.h, self.w), self.v2))
        scaled = self.sing * coef[: self.sing.shape[0]]
        img = self._coef_unorder(scaled, self.hy, self.wy)[:, : self.hy, : self.wy]
        return np.einsum("ia,cab,jb->cij", self.u1, img, self.u2).reshape(-1)

    def _ut(self, y):
        return self._coef_order(np.einsum("ia,cij,jb->cab", self.u1, y.reshape(self.c, self.hy, self.wy), self.u2))

    def _v(self, vec):
        full = np.zeros(self.c * self.h * self.w)
        full[: vec.shape[0]] = vec
        return np.einsum("ha,cab,wb->chw", self.v1, self._coef_unorder(full, self.h, self.w), self.v2).reshape(-1)

    def A_pinv(self, y):
        t = self._ut(y)
        fac = np.where(self.sing != 0, 1 / np.where(self.sing != 0, self.sing, 1), 0)
        return self._v(t[: self.sing.shape[0]] * fac)

    def At(self, y):
        return self._v(self._ut(y)[: self.sing.shape[0]] * self.sing)


def _dense_1d(key: str, info: dict, fx) -> tuple[np.ndarray, np.ndarray]:
    """The official 1-D row and column matrices of a separable operator, float64."""
    height, width = fx["x"].shape[2:]
    if info["class"] == "SRConv":
        mat = fx[f"{key}/A_small_dense"].astype(np.float64)
        return mat, mat
    if info["class"] == "Deblurring":
        kernel = fx[f"{key}/kernel"].astype(np.float64)
        rows, cols = _official_blur_1d(kernel, height), _official_blur_1d(kernel, width)
        if f"{key}/A_small_dense" in fx:
            np.testing.assert_allclose(rows, fx[f"{key}/A_small_dense"], atol=1e-7)
        return rows, cols
    return (_official_blur_1d(fx[f"{key}/kernel1"].astype(np.float64), height),
            _official_blur_1d(fx[f"{key}/kernel2"].astype(np.float64), width))


def _clusters(s: np.ndarray) -> list[np.ndarray]:
    """Index groups of (numerically) equal singular values, s descending."""
    groups, start = [], 0
    for i in range(1, len(s) + 1):
        if i == len(s) or s[i - 1] - s[i] >= REPEATED_SINGULAR_TOL:
            groups.append(np.arange(start, i))
            start = i
    return groups


def _aligned(basis: np.ndarray, official: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """The exact float64 ``basis`` rotated, within each singular subspace, onto the official float32 one
    (orthogonal Procrustes): the official choice of basis, orthonormal to float64 accuracy."""
    out = basis.copy()
    for idx in groups:
        w, _, zt = np.linalg.svd(basis[:, idx].T @ official[:, idx])
        out[:, idx] = basis[:, idx] @ (w @ zt)
    return out


def _official_f64(key: str, info: dict, fx) -> _OfficialF64:
    """The transcription in float64. For the mispaired classes it uses the official SVD bases (the fixture's
    ``U_small`` / ``V_small``, ``*1`` / ``*2`` for Deblurring2D), which matter where a singular value repeats;
    elsewhere any basis gives the same operator."""
    channels = fx["x"].shape[1]
    rows, cols = _dense_1d(key, info, fx)
    factors = [_svd_factors(rows), _svd_factors(cols)]
    if info["class"] in MISPAIRED_CLASSES:
        suffixes = ("1", "2") if f"{key}/U_small1" in fx else ("", "")
        for i, suffix in enumerate(suffixes):
            u, s, v = factors[i]
            groups = _clusters(s)
            factors[i] = (_aligned(u, fx[f"{key}/U_small{suffix}"].astype(np.float64), groups), s,
                          _aligned(v, fx[f"{key}/V_small{suffix}"].astype(np.float64), groups))
    perm = None if info["class"] == "SRConv" else fx[f"{key}/perm"]
    return _OfficialF64(info["class"], factors[0], factors[1], perm, channels)


# The official Deblurring / Deblurring2D scale each SVD coefficient by *another* coefficient's singular value
# (module docstring of deqir_jax.operators, quirk 3). Where a 1-D matrix has a repeated singular value (a box
# kernel of 7, 11 or 13 taps has a multiple zero), its SVD basis within that singular subspace is arbitrary,
# so the official A on a generic image depends on which basis LAPACK returned. These operators are compared
# on images and measurements without components in those subspaces, where every basis gives the same result.
MISPAIRED_CLASSES = ("Deblurring", "Deblurring2D")
REPEATED_SINGULAR_TOL = 1e-5


def _repeated_subspace_projectors(key: str, info: dict, fx):
    """None, or ((left_rows, left_cols), (right_rows, right_cols)): projectors removing the 1-D singular
    subspaces of repeated singular values of a mispaired operator (float64)."""
    if info["class"] not in MISPAIRED_CLASSES:
        return None
    left, right, repeated = [], [], False
    for mat in _dense_1d(key, info, fx):
        u, s, v = _svd_factors(mat)
        close = np.abs(s[:, None] - s[None, :]) < REPEATED_SINGULAR_TOL
        idx = np.flatnonzero(close.sum(axis=1) > 1)
        repeated |= idx.size > 0
        left.append(np.eye(mat.shape[0]) - u[:, idx] @ u[:, idx].T)
        right.append(np.eye(mat.shape[1]) - v[:, idx] @ v[:, idx].T)
    return (tuple(left), tuple(right)) if repeated else None


def _project(vec: np.ndarray, rows: np.ndarray, cols: np.ndarray, channels: int) -> np.ndarray:
    """P_rows X P_cols per channel of a flattened NCHW vector."""
    img = vec.reshape(channels, rows.shape[0], cols.shape[0])
    return np.einsum("ij,cjk,lk->cil", rows, img, cols).reshape(-1)


def test_separable_operators_match_float64_official_code(fx, fixture_ops):
    atol = _atol(fx.meta)
    keys = [k for k, info in fx.meta["operators"].items() if info["class"] in SEPARABLE_CLASSES]
    assert keys, "no separable operator in the fixture"
    channels = fx["x"].shape[1]
    for key in keys:
        info = fx.meta["operators"][key]
        ref = _official_f64(key, info, fx)
        op = fixture_ops[key]
        x_vec = fx["x"][0].reshape(-1).astype(np.float64)
        y_vec = fx[f"{key}/y_rand"][0].astype(np.float64)
        # The float64 transcription with the official bases is the official operator: it reproduces the
        # fixture's A x.
        assert _maxabs(ref.A(x_vec), fx[f"{key}/A_x"][0]) <= atol, key
        projectors = _repeated_subspace_projectors(key, info, fx)
        if projectors is not None:  # compare where the basis does not matter
            (left_r, left_c), (right_r, right_c) = projectors
            x_vec = _project(x_vec, right_r, right_c, channels)
            y_vec = _project(y_vec, left_r, left_c, channels)
        x = ops.official_vector_to_image(jnp.asarray(x_vec[None], jnp.float32), op.image_shape)
        out = _apply_all(op, x, ops.official_vector_to_y(op, jnp.asarray(y_vec[None], jnp.float32)))
        ap_y = ref.A_pinv(y_vec)
        flat = lambda a: np.asarray(ops.image_to_official_vector(a))[0]  # noqa: E731
        assert _maxabs(ops.y_to_official_vector(op, out["A_x"])[0], ref.A(x_vec)) <= atol, key
        assert _maxabs(flat(out["ApA_x"]), ref.A_pinv(ref.A(x_vec))) <= atol, key
        assert _maxabs(flat(out["At_y"]), ref.At(y_vec)) <= atol, key
        err = _maxabs(flat(out["Ap_y"]), ap_y)
        assert err <= atol * max(1.0, np.abs(ap_y).max()), f"{key}: A_pinv y relative error {err:.3g}"


def test_deblurring_quirk_is_not_the_blur(fx, fixture_ops):
    """The official Deblurring A differs per channel from the blur; official=False is the true blur."""
    key = next(k for k, i in fx.meta["operators"].items() if i["class"] == "Deblurring")
    op = fixture_ops[key]
    x = jnp.asarray(_nchw_to_nhwc(fx["x"]))[0]
    channels = x.shape[-1]
    same = jnp.repeat(x[..., :1], channels, axis=-1)  # identical channels
    y = np.asarray(op.A(same))
    assert np.max(np.abs(y[..., 0] - y[..., 1])) > 1e-2  # the official A treats channels differently
    kernel = np.asarray(fx[f"{key}/kernel"], np.float64)
    exact = ops.make_operator(op.name, x.shape[:2], official=False, channels=channels, kernel=fx[f"{key}/kernel"])
    blurred = scipy.ndimage.correlate1d(np.asarray(x, np.float64), kernel, axis=0, mode="constant")
    blurred = scipy.ndimage.correlate1d(blurred, kernel, axis=1, mode="constant")
    assert _maxabs(exact.A(x), blurred) < 1e-5


@pytest.mark.parametrize("name, built, explicit", [
    ("deblur_uni", dict(kernel_size=7), dict(kernel=ops.uniform_kernel(7))),
    ("deblur_gauss", dict(kernel_size=3, sigma=2.0), dict(kernel=ops.gaussian_taps(3, 2.0))),
    ("deblur_aniso", dict(kernel_size=5, sigma1=1.0, sigma2=3.0),
     dict(kernel1=ops.gaussian_taps(5, 1.0), kernel2=ops.gaussian_taps(5, 3.0))),
])
def test_explicit_kernel_equals_built_kernel(name, built, explicit):
    """A deblurring operator given its kernel tensor (as the official class is) equals the one built from
    the size / sigma arguments, for kernel lengths other than the official defaults."""
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (1, 16, 12, 3)), jnp.float32)
    a, b = ops.make_operator(name, (16, 12), **built), ops.make_operator(name, (16, 12), **explicit)
    np.testing.assert_array_equal(np.asarray(a.singulars()), np.asarray(b.singulars()))
    np.testing.assert_array_equal(np.asarray(a.A(x)), np.asarray(b.A(x)))
    np.testing.assert_array_equal(np.asarray(a.project(x)), np.asarray(b.project(x)))
    other = ops.make_operator(name, (16, 12))  # official default kernel length: a different operator
    assert _maxabs(other.A(x), a.A(x)) > 1e-3


# --------------------------------------------------------------------------------------------------
# jit, vmap, batching, layouts


def _core(op, x, y):
    return op.A(x), op.project(x), op.null(x), op.A_pinv(y)


_core_jit = jax.jit(_core)
_core_vmap2_jit = jax.jit(jax.vmap(jax.vmap(_core, in_axes=(None, 0, 0)), in_axes=(None, 0, 0)))


def test_batched_vmapped_and_jitted(fx, fixture_ops):
    rng = np.random.default_rng(0)
    for key in _operator_keys(fx):
        op = fixture_ops[key]
        h, w, c = op.image_shape
        x = jnp.asarray(rng.uniform(-1, 1, (2, 3, h, w, c)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(2, 3) + op.y_shape), jnp.float32)
        batched = _core_jit(op, x, y)  # two leading batch axes
        vmapped = _core_vmap2_jit(op, x, y)  # inside the vmaps the operator sees single (H, W, C) images
        shapes = ((2, 3) + op.y_shape, x.shape, x.shape, x.shape)
        for name, b, v, shape in zip(("A", "project", "null", "A_pinv"), batched, vmapped, shapes):
            assert b.shape == shape and v.shape == shape, (key, name, b.shape, v.shape)
            np.testing.assert_allclose(np.asarray(b), np.asarray(v), atol=1e-5, err_msg=f"{key} {name}")
        # the operator itself is a pytree: leaves are arrays, structure (sizes) is static
        leaves, treedef = jax.tree_util.tree_flatten(op)
        assert all(isinstance(leaf, jax.Array) for leaf in leaves)
        assert jax.tree_util.tree_unflatten(treedef, leaves).y_shape == op.y_shape


def test_layout_round_trips(fx, fixture_ops):
    for key in _operator_keys(fx):
        op = fixture_ops[key]
        vec = jnp.asarray(fx[f"{key}/y_rand"])
        y = ops.official_vector_to_y(op, vec)
        assert y.shape == (vec.shape[0],) + op.y_shape
        np.testing.assert_array_equal(np.asarray(ops.y_to_official_vector(op, y)), np.asarray(vec))
    x = jnp.asarray(_nchw_to_nhwc(fx["x"]))
    vec = ops.image_to_official_vector(x)
    np.testing.assert_array_equal(np.asarray(vec), fx["x"].reshape(fx["x"].shape[0], -1))
    np.testing.assert_array_equal(np.asarray(ops.official_vector_to_image(vec, x.shape[1:])), np.asarray(x))


def test_inpainting_indices_match_official(fx, fixture_ops):
    for key, info in fx.meta["operators"].items():
        if info["class"] != "Inpainting":
            continue
        op = fixture_ops[key]
        n = int(np.prod(op.image_shape))
        missing = np.setdiff1d(np.arange(n), np.asarray(op.kept_indices))
        np.testing.assert_array_equal(missing, np.sort(fx[f"{key}/missing_indices"]))


# --------------------------------------------------------------------------------------------------
# Errors


def _assert_one_line_error(call, match: str):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_clear_errors():
    op = ops.make_operator("sr_averagepooling", 32, factor=4)
    _assert_one_line_error(lambda: ops.make_operator("sr_averagepooling", 30, factor=4), "not divisible")
    _assert_one_line_error(lambda: ops.make_operator("sr_bicubic", (32, 30), factor=4), "not divisible")
    _assert_one_line_error(lambda: ops.make_operator("inpainting", 32, mask=np.ones((16, 16))), "does not match")
    _assert_one_line_error(lambda: ops.make_operator("inpainting", 8, mask=np.full((8, 8), 0.5)), "only 0")
    _assert_one_line_error(lambda: ops.make_operator("cs_walshhadamard", 24), "power-of-two")
    _assert_one_line_error(lambda: ops.make_operator("cs_walshhadamard", 8, perm=np.arange(10)), "permutation")
    _assert_one_line_error(lambda: ops.make_operator("deblur_gauss", 8, singular_perm=np.zeros(64)), "permutation")
    _assert_one_line_error(lambda: ops.make_operator("deblur_blind", 32), "unknown degradation")
    _assert_one_line_error(lambda: ops.make_operator("deblur_gauss", 32, factor=2), "unknown parameter")
    _assert_one_line_error(lambda: ops.make_operator("deblur_uni", 32, kernel=np.ones((3, 3))), "1-D")
    _assert_one_line_error(lambda: ops.make_operator("deblur_aniso", 32, kernel2=[]), "kernel2 must be")
    _assert_one_line_error(lambda: op.A(jnp.zeros((1, 32, 32, 1))), "expected images")
    _assert_one_line_error(lambda: op.project(jnp.zeros((1, 3, 32, 32))), "expected images")
    _assert_one_line_error(lambda: op.A_pinv(jnp.zeros((1, 16, 16, 3))), "expected measurements")
    _assert_one_line_error(lambda: ops.official_vector_to_y(op, jnp.zeros((1, 100))), "official measurement")
    _assert_one_line_error(lambda: jax.jit(op.A)(jnp.zeros((2, 32, 31, 3))), "expected images")


# --------------------------------------------------------------------------------------------------
# Properties on a real photo


@pytest.fixture(scope="module")
def photo() -> jnp.ndarray:
    img = skimage.transform.resize(skimage.data.astronaut(), (64, 64), anti_aliasing=True)
    return jnp.asarray(img * 2.0 - 1.0, jnp.float32)[None]


def _photo_operators(size: int) -> dict[str, ops.LinearOperator]:
    rng = np.random.default_rng(1)
    mask = (rng.uniform(size=(size, size)) > 0.4).astype(np.float32)
    return {
        "sr_averagepooling": ops.make_operator("sr_averagepooling", size, factor=4),
        "sr_bicubic": ops.make_operator("sr_bicubic", size, factor=2),
        "deblur_gauss": ops.make_operator("deblur_gauss", size),
        "deblur_uni": ops.make_operator("deblur_uni", size),
        "deblur_aniso": ops.make_operator("deblur_aniso", size),
        "deblur_gauss_exact": ops.make_operator("deblur_gauss", size, official=False),
        "inpainting": ops.make_operator("inpainting", size, mask=mask),
        "inpainting_per_channel": ops.make_operator(
            "inpainting", size, mask=(rng.uniform(size=(size, size, 3)) > 0.5).astype(np.float32)
        ),
        "colorization": ops.make_operator("colorization", size),
        "cs_walshhadamard": ops.make_operator("cs_walshhadamard", size, ratio=4, seed=3),
        "denoising": ops.make_operator("denoising", size),
    }


CLOSED_FORM = ("sr_averagepooling", "inpainting", "inpainting_per_channel", "colorization", "cs_walshhadamard", "denoising")


@jax.jit
def _properties(op, x, y):
    """Property errors of ``op`` at one image ``x`` (1, H, W, C) and one measurement ``y``."""
    maxabs = lambda a, b: jnp.max(jnp.abs(a - b))  # noqa: E731
    px = op.project(x)
    ax = op.A(x)
    apy = op.A_pinv(y)
    lhs = jnp.vdot(op.A(x[0]), y)
    return {
        "idempotent": maxabs(op.project(px), px),
        "decomposition": maxabs(px + op.null(x), x),
        "P_null": jnp.max(jnp.abs(op.project(op.null(x)))),
        "AP=A_rel": maxabs(op.A(px), ax) / jnp.maximum(1.0, jnp.max(jnp.abs(ax))),
        # adjoint identity <A x, y> = <x, A^T y>
        "adjoint_rel": jnp.abs(lhs - jnp.vdot(x[0], op.At(y))) / jnp.maximum(1.0, jnp.abs(lhs)),
        # A_pinv is a pseudo-inverse: A⁺ A A⁺ = A⁺ (relative to the size of A⁺ y)
        "pinv_rel": maxabs(op.project(apy), apy) / jnp.max(jnp.abs(apy)),
    }


def test_projection_properties_on_photo(photo):
    rng = np.random.default_rng(2)
    print("\nproperties on astronaut 64x64:")
    for name, op in _photo_operators(photo.shape[1]).items():
        y = jnp.asarray(rng.normal(size=op.y_shape), jnp.float32)
        errs = {k: float(v) for k, v in _properties(op, photo, y).items()}
        if name.endswith("_exact"):  # official=False: A is the exact blur, P the truncated projection
            assert errs.pop("AP=A_rel") > 1e-4
        print(f"  {name:24s} " + " ".join(f"{k}={v:.1g}" for k, v in errs.items()))
        tol = 1e-6 if name in CLOSED_FORM else 1e-5
        for prop, err in errs.items():
            assert err <= tol, f"{name}: {prop} error {err:.3g} > {tol}"


def test_closed_forms_on_photo(photo):
    size = photo.shape[1]
    x = np.asarray(photo[0], np.float64)
    o = _photo_operators(size)
    y = np.asarray(o["sr_averagepooling"].A(photo))[0]
    np.testing.assert_allclose(y, x.reshape(size // 4, 4, size // 4, 4, 3).mean(axis=(1, 3)), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(o["sr_averagepooling"].A_pinv(y)), np.kron(y, np.ones((4, 4, 1))), atol=1e-6
    )
    gray = np.asarray(o["colorization"].A(photo))[0, ..., 0]
    np.testing.assert_allclose(gray, x @ np.array(ops.OFFICIAL_COLOR_WEIGHTS), atol=1e-6)
    inp = o["inpainting"]
    np.testing.assert_allclose(np.asarray(inp.A_pinv(inp.A(photo)))[0], x * np.asarray(inp.mask), atol=0)
    # WHT with ratio 1 is orthogonal: |A x| = |x| and A⁺ A = I.
    wht = ops.make_operator("cs_walshhadamard", size, ratio=1, seed=0)
    np.testing.assert_allclose(float(jnp.linalg.norm(wht.A(photo))), float(jnp.linalg.norm(photo)), rtol=1e-5)
    assert _maxabs(wht.A_pinv(wht.A(photo)), photo) < 1e-5
    # Bicubic SR with official=False is the exact strided convolution with reflect padding.
    exact = ops.make_operator("sr_bicubic", size, factor=2, official=False)
    k = ops.bicubic_kernel(2).astype(np.float64)
    padded = np.pad(x, ((k.size // 2, k.size // 2), (k.size // 2, k.size // 2), (0, 0)), mode="symmetric")
    conv = scipy.ndimage.correlate1d(padded, k, axis=0, mode="constant")
    conv = scipy.ndimage.correlate1d(conv, k, axis=1, mode="constant")
    start = k.size // 2 + 1  # output r is centred on pixel 1 + 2 r (official stride//2 + stride*r)
    ref = conv[start : start + size : 2, start : start + size : 2]
    assert _maxabs(exact.A(photo)[0], ref) < 1e-5


# ----------------------------------------------------------------------------------------- pictures of y
def _picture_ops(size=16):
    return {
        "sr_averagepooling": ops.make_operator("sr_averagepooling", size, factor=2),
        "deblur_gauss": ops.make_operator("deblur_gauss", size),
        "colorization": ops.make_operator("colorization", size),
        "inpainting": ops.make_operator("inpainting", size, mask=(np.arange(size) % 2 == 0)[:, None]
                                        * np.ones((size, size))),
        "cs_walshhadamard": ops.make_operator("cs_walshhadamard", size),
    }


def test_measurement_pictures_round_trip():
    """op.measurement_image(y) is what a person sees (y, grey as RGB, or A^+ y for vectors); for every
    operator whose measurements are pictures, op.measurement_from_image(picture) gives y back."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
    for name, op in _picture_ops().items():
        y = op.A(x)
        picture = op.measurement_image(y)
        assert picture.ndim == 4 and picture.shape[-1] == 3, name
        if op.y_layout == "vector":
            np.testing.assert_allclose(picture, np.asarray(op.A_pinv(y)), atol=1e-6, err_msg=name)
        if name == "cs_walshhadamard":
            with pytest.raises(ValueError, match="cannot be given as an image"):
                op.measurement_from_image(picture)
            continue
        back = op.measurement_from_image(picture)
        np.testing.assert_allclose(np.asarray(back), np.asarray(y), atol=1e-5, err_msg=name)


def test_measurement_picture_of_the_wrong_size_is_a_one_line_error():
    ops_ = _picture_ops()
    with pytest.raises(ValueError, match="measurement image is 9x8, sr_averagepooling expects 8x8"):
        ops_["sr_averagepooling"].measurement_from_image(np.zeros((1, 9, 8, 3), np.float32))
    with pytest.raises(ValueError, match="measurement image is 8x8, inpainting expects 16x16"):
        ops_["inpainting"].measurement_from_image(np.zeros((1, 8, 8, 3), np.float32))
