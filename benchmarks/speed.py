r"""Speed of every network and of both whole samplers: compile time, time per call, images/s, XLA's FLOPs,
bytes and memory, and a roofline projection onto one H100 SXM and one TPU v5e chip.

    python benchmarks/speed.py                                  # every entry, batches 1,8, float32 + bfloat16
    python benchmarks/speed.py --quick                          # tiny sizes, CPU smoke run (< 1 min)
    python benchmarks/speed.py --only swin,resshift --batches 1 --dtypes bfloat16
    python benchmarks/speed.py --only adm_small --official /tmp/official_gd    # against the official module

Entries (``--only``; random weights: the speed does not depend on their values):

* ``swin``: ResShift's Swin-UNet of the released ``realsr_x4_v3`` config on a 64x64x3 latent (LQ 64x64);
* ``vq_encode`` / ``vq_decode``: the VQ-f4 autoencoder, 256x256 image <-> 64x64x3 latent (decode quantises);
* ``resshift``: the whole 4-step ResShift restoration 64 -> 256 (``resshift_jax.pipeline.make_restorer``:
  bicubic, VQ encode, 4 UNet steps, VQ decode);
* ``adm256``: guided-diffusion's ADM UNet, ImageNet 256x256 unconditional (``configs/deqir/models``);
* ``adm_small``: the small embedded DeqIR prior (``configs/deqir/models/embedded_small.py``) at 64x64;
* ``deqir_round_adm256`` / ``deqir_round_small``: one round of DeqIR's parallel solve at T = ``--timesteps``
  (the sampling map: one batched UNet call over the T states of the chain, then the closed-form combination;
  SR x4 average pooling), per image (a batch of B images is B x T UNet rows);
* ``deqir_seq_adm256`` / ``deqir_seq_small``: the whole T-step sequential DDIM + DDNM chain (T UNet calls).

Each entry runs at every ``--batches`` size (images per call) and ``--dtypes`` compute dtype (the model
configs' ``dtype`` field; parameters stay float32). Compile time (``jit(f).lower(...).compile()``) is reported
apart; the time per call is the median of ``--repeats`` calls after ``--warmup`` calls. FLOPs and bytes accessed
come from the compiled program's ``cost_analysis()``, peak / temporary memory from ``memory_analysis()``.
XLA counts the body of a loop once, so for the looped entries (``deqir_seq_*``: T steps, ``resshift``: 4 steps)
the FLOPs and bytes are XLA's count plus (trips - 1) x the UNet call's count (same batch and dtype); the raw
counts are kept as ``xla_flops`` / ``xla_bytes``. Bytes accessed and memory are those of the program compiled
for this platform (fusion differs between CPU, GPU and TPU).

On the CPU every case compiles with the samplers' tuned XLA options (``ircore.compiling.sampling_options``,
what ``python -m resshift_jax.sample`` / ``deqir_jax.sample`` run with); ``--xla-defaults`` compiles with XLA's
own instead, and ``--versus-xla-defaults`` times both compiles of every case interleaved and reports the ratio
tuned / default and the largest output change.

Roofline ("projection", not a measurement): max(FLOPs / peak, bytes / bandwidth) per call at the published peak
rates of one H100 SXM (dense bf16 989 TFLOP/s, fp32 67 TFLOP/s, HBM 3.35 TB/s) and one TPU v5e chip (bf16 197
TFLOP/s, HBM 819 GB/s; the v5e has no published fp32 rate: float32 rows use the bf16 rate, as XLA's default
float32 matmul precision on TPU runs in bf16 passes). It is a lower bound that assumes perfect overlap.

``--official PATH`` (a local checkout of openai/guided-diffusion or zsyOAOA/ResShift, with torch installed) also
times the official PyTorch module of each selected network on the same weights (``benchmarks/official_models.py``:
the official model with random weights in a subprocess started with the glibc allocator settings, its state dict
converted with this project's converters), in interleaved pairs (ours, official, ours, ...) after waiting for
the machine's load average to drop below ``--quiet-load`` (at most ``--quiet-timeout`` s; a warning is recorded
when it does not), checks the outputs agree and reports the ratio ours / official.

``--compile-only`` compiles and analyses without timing: the FLOPs, bytes, memory and projections of the
full-size cases on a machine too slow to run them (the bytes and memory are still this platform's).

Writes ``--out`` (JSON, default ``benchmarks/results/speed_<platform>.json``) after every entry, so a run cut off
by a timeout keeps what it measured; ``--budget`` skips the remaining cases once that many seconds have passed.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ircore import files  # noqa: E402
from ircore.config_utils import load_config_file  # noqa: E402

ENTRIES = ("swin", "vq_encode", "vq_decode", "resshift", "adm256", "adm_small",
           "deqir_round_adm256", "deqir_seq_adm256", "deqir_round_small", "deqir_seq_small")
DTYPES = ("float32", "bfloat16", "float16")

# Published peak rates per chip: (16-bit dense TFLOP/s, float32 TFLOP/s, HBM TB/s).
PEAKS = {
    "h100_sxm": {"bf16_tflops": 989.0, "fp32_tflops": 67.0, "hbm_tbps": 3.35,
                 "note": "H100 SXM data sheet: dense bf16 989 TFLOP/s, fp32 67 TFLOP/s, HBM3 3.35 TB/s"},
    "tpu_v5e": {"bf16_tflops": 197.0, "fp32_tflops": 197.0, "hbm_tbps": 0.819,
                "note": "TPU v5e: bf16 197 TFLOP/s, HBM 819 GB/s; no published fp32 rate, float32 rows use "
                        "the bf16 rate (XLA's default float32 matmul precision on TPU)"},
}


# ----------------------------------------------------------------------------------------------- sizes
@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of one run: full (the released networks) or quick (tiny networks, CPU smoke run)."""

    quick: bool
    timesteps: int
    fast_compile: bool = False  # CPU: XLA compiles with LLVM optimisations off (ircore.compiling)
    xla_defaults: bool = False  # compile with XLA's own options instead of the samplers' (ircore.compiling)

    @property
    def hq(self) -> int:  # ResShift output / VQ image side
        return 32 if self.quick else 256

    @property
    def latent(self) -> int:  # ResShift latent side (= LQ side at x4 with VQ-f4)
        return self.hq // 4

    @property
    def adm_size(self) -> int:
        return 32 if self.quick else 256

    @property
    def small_size(self) -> int:
        return 32 if self.quick else 64


def resshift_config(sizes: Sizes, dtype: str) -> ml_collections.ConfigDict:
    """realsr_x4_v3 (quick: the tiny UNet / VQ of configs/resshift/tiny_train.py) computing in ``dtype``."""
    if sizes.quick:
        cfg = load_config_file(REPO / "configs/resshift/tiny_train.py", "realsr")
    else:
        cfg = load_config_file(REPO / "configs/resshift/realsr_x4_v3.py")
    cfg.sample.dtype = dtype
    cfg.autoencoder.dtype = dtype
    return cfg


TINY_ADM = dict(  # quick mode's stand-in for ADM 256 (and, with the embedded prior's widths, for the small one)
    image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16",
    num_heads=4, num_head_channels=16, num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
    learn_sigma=True, class_cond=False, dropout=0.0, use_new_attention_order=False,
)


def adm_config(which: str, sizes: Sizes, dtype: str) -> ml_collections.ConfigDict:
    """The ``model`` section of the ADM 256 prior (quick: a tiny 32x32 ADM) or of the small embedded prior."""
    from deqir_jax.models.adm_config import guided_diffusion_model_config

    if which == "adm256":
        if sizes.quick:
            model = guided_diffusion_model_config(**TINY_ADM)
        else:
            model = load_config_file(REPO / "configs/deqir/models/imagenet256_uncond.py").model
    else:
        model = load_config_file(REPO / "configs/deqir/models/embedded_small.py").model
        if sizes.quick:  # fewer layers: compile time is what a smoke run pays for
            model.update({"num_res_blocks": 1, "channel_mult": "1,2"})
    model.dtype = dtype
    return model


# ----------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    """One timed function: ``fn(*args)`` (jit-compiled by the runner) on ``images`` images per call."""

    fn: Callable
    args: tuple
    images: int
    description: str
    loop: Optional[tuple[int, str]] = None  # (trips, entry whose call is the loop body)
    extra: dict = dataclasses.field(default_factory=dict)


_PARAMS: dict = {}


def _cached_params(key: str, init: Callable[[], Any]) -> Any:
    """Random parameters per network (float32, shared by every dtype and batch)."""
    if key not in _PARAMS:
        _PARAMS[key] = jax.block_until_ready(init())
    return _PARAMS[key]


def _normal(seed: int, shape: tuple, scale: float = 1.0) -> np.ndarray:
    """Host-side random input (numpy: no device program to compile for it)."""
    return (np.random.default_rng(seed).standard_normal(shape, np.float32) * scale).astype(np.float32)


def random_params(shapes: Any, seed: int) -> Any:
    """Random float32 parameters of a tree of ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape`` of the init: no
    init program is compiled): N(0, 1/fan_in) kernels, 1 + N(0, 0.01) norm scales, N(0, 0.01) biases."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1])) if path else ""
        if len(s.shape) > 1:
            fan_in = int(np.prod(s.shape[:-1]))
            return rng.standard_normal(s.shape, np.float32) / np.float32(math.sqrt(fan_in))
        base = 1.0 if "scale" in name else 0.0
        return (base + 0.1 * rng.standard_normal(s.shape, np.float32)).astype(np.float32)

    return jax.device_put(jax.tree_util.tree_map_with_path(leaf, shapes))


def _swin_parts(sizes: Sizes, dtype: str):
    from resshift_jax import networks
    from resshift_jax.models import unet_swin

    cfg = resshift_config(sizes, dtype)
    net = networks.unet(cfg, dtype)
    params = _cached_params(f"swin-{sizes.quick}", lambda: random_params(
        unet_swin.param_shapes(networks.unet(cfg, "float32")), 0))
    return cfg, net, params


def _vq_parts(sizes: Sizes, dtype: str):
    from resshift_jax.models import vq

    cfg = resshift_config(sizes, dtype)
    ae = vq.model_from_config(cfg.autoencoder)
    params = _cached_params(f"vq-{sizes.quick}", lambda: random_params(vq.param_shapes(cfg.autoencoder), 1))
    return cfg, ae, params


def _adm_parts(which: str, sizes: Sizes, dtype: str):
    from deqir_jax import models

    model_cfg = adm_config(which, sizes, dtype)
    model = models.model_from_config(model_cfg)
    params = _cached_params(f"{which}-{sizes.quick}", lambda: random_params(
        models.architecture(model_cfg).param_shapes(adm_config(which, sizes, "float32")), 2))
    return model_cfg, model, params


def build_case(name: str, batch: int, dtype: str, sizes: Sizes) -> Case:
    """The function, inputs and description of entry ``name`` at ``batch`` images in ``dtype``."""
    B = batch
    if name == "swin":
        cfg, net, params = _swin_parts(sizes, dtype)
        s = sizes.latent
        x, lq = _normal(3, (B, s, s, int(cfg.model.in_channels))), _normal(4, (B, s, s, 3))
        t = np.full((B,), 2, np.int32)
        fn = lambda p, x, t, lq: net.apply({"params": p}, x, t, lq=lq)  # noqa: E731
        return Case(fn, (params, x, t, lq), B, f"ResShift Swin-UNet ({cfg.name} sizes), latent {s}x{s}")
    if name in ("vq_encode", "vq_decode"):
        from resshift_jax.models import vq

        cfg, ae, params = _vq_parts(sizes, dtype)
        ae = vq.model_from_config(cfg.autoencoder, dtype=dtype)
        if name == "vq_encode":
            x = _normal(5, (B, sizes.hq, sizes.hq, 3))
            fn = lambda p, x: ae.apply({"params": p}, x, method=vq.VQModel.encode)  # noqa: E731
            return Case(fn, (params, x), B, f"VQ-f4 encode {sizes.hq}x{sizes.hq} -> {sizes.latent}x{sizes.latent}")
        z = _normal(6, (B, sizes.latent, sizes.latent, ae.embed_dim))
        fn = lambda p, z: ae.apply({"params": p}, z, method=vq.VQModel.decode)  # noqa: E731
        return Case(fn, (params, z), B, f"VQ-f4 decode (quantised) {sizes.latent}x{sizes.latent} -> {sizes.hq}")
    if name == "resshift":
        from resshift_jax.pipeline import make_restorer

        cfg, _, unet_params = _swin_parts(sizes, dtype)
        _, _, vq_params = _vq_parts(sizes, dtype)
        restorer = make_restorer(cfg)
        lq = np.clip(_normal(7, (B, sizes.latent, sizes.latent, 3), 0.5), -1, 1)
        steps = int(cfg.diffusion.steps)

        def fn(up, vp, lq, key):
            return restorer.fn(up, vp, lq, None, key, None)

        return Case(fn, (unet_params, vq_params, lq, jax.random.PRNGKey(8)), B,
                    f"ResShift {steps}-step restoration {sizes.latent} -> {sizes.hq}", loop=(steps, "swin"))
    if name in ("adm256", "adm_small"):
        model_cfg, model, params = _adm_parts(name, sizes, dtype)
        s = int(model_cfg.image_size) if name == "adm256" else sizes.small_size
        x, t = _normal(9, (B, s, s, 3)), np.full((B,), 500, np.int32)
        fn = lambda p, x, t: model.apply({"params": p}, x, t)  # noqa: E731
        label = "ADM 256 uncond" if name == "adm256" and not sizes.quick else f"ADM ({name})"
        return Case(fn, (params, x, t), B, f"{label} UNet {s}x{s}")
    if name.startswith("deqir_"):
        return _deqir_case(name, B, dtype, sizes)
    raise ValueError(f"unknown entry {name!r}")


def _deqir_case(name: str, B: int, dtype: str, sizes: Sizes) -> Case:
    from deqir_jax import fixed_point, sequential
    from deqir_jax import operators as ops
    from deqir_jax.restore import chain_schedule

    prior = "adm256" if name.endswith("adm256") else "adm_small"
    model_cfg, model, params = _adm_parts(prior, sizes, dtype)
    s = sizes.adm_size if prior == "adm256" else sizes.small_size
    T = sizes.timesteps
    op = ops.make_operator("sr_averagepooling", (s, s), factor=4)
    clean = np.clip(_normal(10, (B, s, s, 3), 0.5), -1, 1)
    y = op.A(jnp.asarray(clean))
    x_T, z = _normal(11, (B, s, s, 3)), _normal(12, (B, s, s, 3))
    t, at, at_next = chain_schedule(T)
    prior_label = "ADM 256" if prior == "adm256" and not sizes.quick else prior
    if "_seq_" in name:
        def fn(p, op, y, x_T, z):
            eps_fn = fixed_point.eps_fn_from_model(model, p)
            return sequential.sequential_sample(eps_fn, op, x_T, y, z, t, at, at_next, nw=0.0, etw=0.1).x0

        return Case(fn, (params, op, y, x_T, z), B, f"DeqIR sequential chain T={T}, {prior_label} {s}x{s}",
                    loop=(T, prior), extra={"timesteps": T, "unet_rows_per_call": B * T})

    def coefficients(x_T1, y1, z1):
        return fixed_point.make_coefficients(op, x_T1[None], y1[None], z1[None], t, at, at_next, nw=0.0, etw=0.1)

    coefs = jax.jit(jax.vmap(coefficients))(x_T, y, z)
    X = np.repeat(x_T[:, None], T, axis=1)  # (B, T, H, W, C): the official initial guess

    def fn(p, op, coefs, X):
        eps_fn = fixed_point.eps_fn_from_model(model, p)
        return jax.vmap(lambda c, x: fixed_point.deq_map(eps_fn, op, c, x))(coefs, X)

    return Case(fn, (params, op, coefs, X), B, f"DeqIR parallel round T={T} ({B * T} UNet rows), "
                f"{prior_label} {s}x{s}", extra={"timesteps": T, "unet_rows_per_call": B * T})


# ----------------------------------------------------------------------------------------------- measuring
def _first(analysis: Any) -> dict:
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return dict(analysis or {})


def compiled_costs(compiled) -> dict:
    """FLOPs / bytes accessed (``cost_analysis``) and memory (``memory_analysis``) of a compiled program."""
    try:
        cost = _first(compiled.cost_analysis())
    except Exception:  # noqa: BLE001 - some backends do not implement it
        cost = {}
    out = {"xla_flops": float(cost["flops"]) if "flops" in cost else None,
           "xla_bytes": float(cost["bytes accessed"]) if "bytes accessed" in cost else None}
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        mem = None
    if mem is not None:
        arg, outb = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
        temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
        peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
        out.update(argument_bytes=arg, output_bytes=outb, temp_bytes=temp,
                   peak_bytes=peak if peak > 0 else arg + outb + temp - alias,
                   peak_source="memory_analysis().peak_memory_in_bytes" if peak > 0
                   else "argument + output + temp - alias")
    return out


def projection(flops: Optional[float], nbytes: Optional[float], dtype: str) -> dict:
    """Roofline time per call (s) on each chip of :data:`PEAKS`: max(flops / peak, bytes / bandwidth)."""
    out = {}
    if not flops or not nbytes:
        return out
    for chip, peak in PEAKS.items():
        rate = (peak["fp32_tflops"] if dtype == "float32" else peak["bf16_tflops"]) * 1e12
        compute, memory = flops / rate, nbytes / (peak["hbm_tbps"] * 1e12)
        out[chip] = {"s": max(compute, memory), "compute_s": compute, "memory_s": memory,
                     "bound": "compute" if compute >= memory else "memory"}
    return out


def timed_calls(compiled, args: tuple, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return times


_COSTS: dict = {}


def compile_options(sizes: Sizes) -> Optional[dict]:
    """What every case compiles with: the samplers' options (as users get them) plus the fast-compile ones."""
    from ircore.compiling import FAST_COMPILE_OPTIONS, sampling_options

    options = {} if sizes.xla_defaults else (sampling_options() or {})
    if sizes.fast_compile and jax.default_backend() == "cpu":
        options.update(FAST_COMPILE_OPTIONS)
    return options or None


def body_costs(name: str, batch: int, dtype: str, sizes: Sizes) -> dict:
    """Costs of one call of entry ``name`` (the loop body of a looped entry), compiled but not run."""
    key = (name, batch, dtype)
    if key not in _COSTS:
        case = build_case(name, batch, dtype, sizes)
        lowered = jax.jit(case.fn).lower(*case.args)
        _COSTS[key] = compiled_costs(lowered.compile(compiler_options=compile_options(sizes)))
    return _COSTS[key]


def versus_xla_defaults(name: str, batch: int, dtype: str, sizes: Sizes, repeats: int) -> dict:
    """Time ``name`` compiled with the samplers' options and with XLA's own, interleaved call by call."""
    case = build_case(name, batch, dtype, sizes)
    args = jax.block_until_ready(jax.device_put(case.args))
    compiled = {label: jax.jit(case.fn).lower(*args).compile(compiler_options=compile_options(
        dataclasses.replace(sizes, xla_defaults=label == "xla_default"))) for label in ("tuned", "xla_default")}
    outs = {label: jax.block_until_ready(c(*args)) for label, c in compiled.items()}
    times: dict = {label: [] for label in compiled}
    for _ in range(repeats):
        for label, c in compiled.items():
            times[label].extend(timed_calls(c, args, 0, 1))
    diff = max(float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))
               for a, b in zip(jax.tree.leaves(outs["tuned"]), jax.tree.leaves(outs["xla_default"])))
    medians = {label: statistics.median(t) for label, t in times.items()}
    return {"tuned_s": medians["tuned"], "xla_default_s": medians["xla_default"],
            "tuned_over_xla_default": medians["tuned"] / medians["xla_default"], "max_abs_output_change": diff,
            "tuned_times_s": times["tuned"], "xla_default_times_s": times["xla_default"]}


def run_case(name: str, batch: int, dtype: str, sizes: Sizes, warmup: int, repeats: int) -> dict:
    case = build_case(name, batch, dtype, sizes)
    args = jax.block_until_ready(jax.device_put(case.args))
    start = time.perf_counter()
    lowered = jax.jit(case.fn).lower(*args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=compile_options(sizes))
    compile_s = time.perf_counter() - start
    costs = compiled_costs(compiled)
    _COSTS.setdefault((name, batch, dtype), costs)
    times = timed_calls(compiled, args, warmup, repeats) if repeats else []
    median = statistics.median(times) if times else None
    row = {"name": name, "description": case.description, "batch": batch, "images_per_call": case.images,
           "dtype": dtype, "lower_s": lower_s, "compile_s": compile_s, "repeats": repeats, "warmup": warmup,
           "median_s": median, "min_s": min(times) if times else None, "max_s": max(times) if times else None,
           "times_s": times, "images_per_s": case.images / median if times else None, **case.extra, **costs}
    flops, nbytes, note = costs["xla_flops"], costs["xla_bytes"], "xla cost_analysis"
    if case.loop is not None and flops is not None:
        trips, body = case.loop
        bc = body_costs(body, batch, dtype, sizes)
        if bc.get("xla_flops") is not None and bc.get("xla_bytes") is not None and nbytes is not None:
            flops, nbytes = flops + (trips - 1) * bc["xla_flops"], nbytes + (trips - 1) * bc["xla_bytes"]
            note = f"xla cost_analysis + ({trips} - 1) x {body} call (XLA counts a loop body once)"
    row.update(flops=flops, bytes=nbytes, cost_note=note,
               achieved_tflops=None if flops is None or median is None else flops / median / 1e12,
               projection=projection(flops, nbytes, dtype))
    return row


# ----------------------------------------------------------------------------------------------- output
def _fmt(v: Optional[float], scale: float = 1.0, spec: str = ".3g") -> str:
    return "-" if v is None else format(v * scale, spec)


HEADER = (f"{'entry':<20} {'B':>3} {'dtype':<8} {'compile s':>9} {'ms/call':>9} {'img/s':>8} {'GFLOP':>9} "
          f"{'GB':>8} {'peak MB':>8} | {'H100 proj ms':>12} {'v5e proj ms':>11}")


def table_line(row: dict) -> str:
    if "error" in row or "skipped" in row:
        why = row.get("error") or row.get("skipped")
        return f"{row['name']:<20} {row['batch']:>3} {row['dtype']:<8} {why}"
    proj = row.get("projection", {})
    h100 = proj.get("h100_sxm", {}).get("s")
    v5e = proj.get("tpu_v5e", {}).get("s")
    return (f"{row['name']:<20} {row['batch']:>3} {row['dtype']:<8} {row['compile_s']:>9.2f} "
            f"{_fmt(row['median_s'], 1e3, '.2f'):>9} {_fmt(row['images_per_s']):>8} {_fmt(row['flops'], 1e-9):>9} "
            f"{_fmt(row['bytes'], 1e-9):>8} {_fmt(row.get('peak_bytes'), 1e-6, '.0f'):>8} | "
            f"{_fmt(h100, 1e3):>12} {_fmt(v5e, 1e3):>11}")


def _list(value: str, allowed: tuple, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"error: unknown {what} {', '.join(bad) or repr(value)}; expected some of "
                         f"{', '.join(allowed)}")
    return items


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="Entries: " + ", ".join(ENTRIES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny networks (32x32), T=4, batch 1, float32, 3 repeats, fast CPU compiles")
    parser.add_argument("--fast-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="CPU only: compile with LLVM optimisations off (faster compiles, slower calls; "
                             "default: on with --quick)")
    parser.add_argument("--only", default="", help="comma-separated entries (default: all)")
    parser.add_argument("--batches", default=None, help="images per call, comma-separated (default 1,8; quick 1)")
    parser.add_argument("--dtypes", default=None,
                        help="compute dtypes, comma-separated (default float32,bfloat16; quick float32)")
    parser.add_argument("--timesteps", type=int, default=None, help="DeqIR chain length T (default 25; quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10; quick 3)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile and analyse only (FLOPs, bytes, memory, projection), no timed calls")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="seconds; skip the remaining cases once a run has taken this long (0: no limit)")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/speed_<platform>.json)")
    parser.add_argument("--official", default="", metavar="PATH[,PATH]",
                        help="checkout(s) of openai/guided-diffusion (adm256, adm_small) and/or zsyOAOA/ResShift "
                             "(swin, vq_encode, vq_decode, resshift): also time the official module of each "
                             "selected network")
    parser.add_argument("--xla-defaults", action="store_true",
                        help="compile with XLA's own options instead of the samplers' tuned CPU options")
    parser.add_argument("--versus-xla-defaults", action="store_true",
                        help="also time every case compiled with XLA's own options, interleaved with the tuned "
                             "compile, and report the ratio tuned / XLA default")
    parser.add_argument("--pairs", type=int, default=5, help="--official: interleaved (ours, official) pairs")
    parser.add_argument("--quiet-load", type=float, default=None,
                        help="--official: wait before each pair until the 1-min load average is below this "
                             "(default: half the CPU count)")
    parser.add_argument("--quiet-timeout", type=float, default=60.0,
                        help="--official: longest wait for a quiet machine per pair (s); then a warning")
    parser.add_argument("--official-device", default="cpu", help="--official: torch device (cpu / cuda)")
    args = parser.parse_args(argv)
    args.entries = _list(args.only, ENTRIES, "entry") if args.only else list(ENTRIES)
    missing = [p for p in (args.official.split(",") if args.official else []) if not pathlib.Path(p).is_dir()]
    if missing:
        raise SystemExit(f"error: --official {','.join(missing)} is not a folder; give local checkout(s) of "
                         "openai/guided-diffusion and/or zsyOAOA/ResShift")
    args.batches = [int(b) for b in (args.batches or ("1" if args.quick else "1,8")).split(",")]
    if any(b < 1 for b in args.batches):
        raise SystemExit("error: --batches must be positive integers")
    args.dtypes = _list(args.dtypes or ("float32" if args.quick else "float32,bfloat16"), DTYPES, "dtype")
    args.timesteps = args.timesteps or (4 if args.quick else 25)
    args.repeats = args.repeats or (3 if args.quick else 10)
    if args.repeats < 1 or args.timesteps < 1 or args.warmup < 0:
        raise SystemExit("error: --repeats and --timesteps must be >= 1, --warmup >= 0")
    return args


def versus_rows(args: argparse.Namespace, sizes: Sizes) -> list:
    """:func:`versus_xla_defaults` for every selected case, printed as a table."""
    from ircore.compiling import sampling_options

    if not sampling_options():
        print(f"\n--versus-xla-defaults: no tuned options on {jax.default_backend()}; nothing to compare")
        return []
    print(f"\ntuned options {sampling_options()} against XLA's own, interleaved, {args.repeats} calls each")
    print(f"{'entry':<22} {'B':>3} {'dtype':<8} {'tuned ms':>9} {'default ms':>10} {'tuned/default':>13} "
          f"{'max|change|':>11}")
    rows = []
    for dtype in args.dtypes:
        for batch in args.batches:
            for name in args.entries:
                try:
                    row = {"name": name, "batch": batch, "dtype": dtype,
                           **versus_xla_defaults(name, batch, dtype, sizes, args.repeats)}
                    print(f"{name:<22} {batch:>3} {dtype:<8} {row['tuned_s'] * 1e3:>9.1f} "
                          f"{row['xla_default_s'] * 1e3:>10.1f} {row['tuned_over_xla_default']:>13.3f} "
                          f"{row['max_abs_output_change']:>11.1e}", flush=True)
                except Exception as err:  # noqa: BLE001 - recorded, the other cases still run
                    row = {"name": name, "batch": batch, "dtype": dtype, "error": f"{type(err).__name__}: {err}"}
                    print(f"{name:<22} {batch:>3} {dtype:<8} error: {row['error'][:200]}", flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    fast = args.quick if args.fast_compile is None else args.fast_compile
    sizes = Sizes(quick=args.quick, timesteps=args.timesteps, fast_compile=fast, xla_defaults=args.xla_defaults)
    device = jax.devices()[0]
    out_path = pathlib.Path(args.out or REPO / f"benchmarks/results/speed_{device.platform}.json")
    result = {
        "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})", "platform": device.platform,
        "jax_version": jax.__version__, "quick": args.quick, "timesteps": args.timesteps,
        "entries": args.entries, "batches": args.batches, "dtypes": args.dtypes, "repeats": args.repeats,
        "warmup": args.warmup, "compile_only": args.compile_only,
        "fast_compile": fast and jax.default_backend() == "cpu",
        "xla_defaults": args.xla_defaults, "compile_options": compile_options(sizes),
        "loadavg_start": list(os.getloadavg()), "peaks": PEAKS,
        "projection_note": "roofline projection max(flops/peak, bytes/bandwidth) per call, not a measurement",
        "rows": [],
    }
    print(f"device: {result['device']}, jax {jax.__version__}{' (quick)' if args.quick else ''}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(HEADER)
    print("-" * len(HEADER))
    started = time.perf_counter()
    for dtype in args.dtypes:  # every entry at one setting before the next (a --budget cut keeps a full set)
        for batch in args.batches:
            for name in args.entries:
                if args.budget and time.perf_counter() - started > args.budget:
                    row = {"name": name, "batch": batch, "dtype": dtype,
                           "skipped": f"skipped: budget of {args.budget:g} s spent"}
                else:
                    try:
                        row = run_case(name, batch, dtype, sizes, 0 if args.compile_only else args.warmup,
                                       0 if args.compile_only else args.repeats)
                    except Exception as err:  # noqa: BLE001 - one failed case (e.g. out of memory) is a row
                        row = {"name": name, "batch": batch, "dtype": dtype,
                               "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
                result["rows"].append(row)
                print(table_line(row), flush=True)
                files.write_json(out_path, result)
    print("(ms/call: median; 'proj': roofline projection from the FLOPs and bytes, not measured)")
    if args.versus_xla_defaults and not args.compile_only:
        result["versus_xla_defaults"] = versus_rows(args, sizes)
        files.write_json(out_path, result)
    if args.official:
        from benchmarks import official_models

        result["official"] = official_models.compare(args, sizes, sys.modules[__name__])
        files.write_json(out_path, result)
    result["total_s"] = time.perf_counter() - started
    files.write_json(out_path, result)
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
