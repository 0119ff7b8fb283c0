"""Extra XLA options: the samplers' tuned CPU options (per compile or per process), fast CPU test compiles."""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import jax

# LLVM optimisations off: about 2x faster CPU compilation, slower steps.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# XLA:CPU hands only single matmuls to YNNPACK (XLA's default also gives it convolutions with their neighbouring
# elementwise ops and reductions, which is slower for these networks). Measured interleaved, float32, batch 1,
# 2-core x86 (benchmarks/speed.py --versus-xla-defaults, benchmarks/results/speed_cpu_official.json): whole
# ResShift 4-step restoration 0.78x the time of XLA's default, Swin-UNet 0.88x, VQ-f4 encode 0.86x / decode 0.85x,
# ADM 256 0.84x, ADM 64x64 0.94x. Outputs change by float32 rounding only (at most 9e-6).
CPU_SAMPLING_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def sampling_options(backend: Optional[str] = None) -> Optional[dict]:
    """XLA options the samplers compile with on ``backend`` (default: JAX's default backend), None for XLA's own.

    Only the CPU has tuned options, and a user's own ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS``
    wins over them.
    """
    if (backend or jax.default_backend()) != "cpu":
        return None
    if "xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_SAMPLING_OPTIONS)


def tune_cpu_xla_flags(environ: Optional[dict] = None) -> bool:
    """Adds :data:`CPU_SAMPLING_OPTIONS` to ``XLA_FLAGS`` for this process (the sampling CLIs call it first thing).

    ``jax.jit`` cannot carry compiler options into a jit nested in a user's own, so the sampling command lines
    set the flag for their whole process instead. It acts only before JAX starts its backends and only where
    the user has not chosen the setting in ``XLA_FLAGS``; accelerators ignore CPU flags. Returns whether it set
    the flag.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags or _backends_started():
        return False
    value = CPU_SAMPLING_OPTIONS["xla_cpu_experimental_ynn_fusion_type"].removeprefix("LIBRARY_FUSION_TYPE_").lower()
    environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type={value}".strip()
    return True


def _backends_started() -> bool:
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


class CompileOnce:
    """A jitted function compiled on first call with extra XLA ``options`` (same call signature as the jit)."""

    def __init__(self, jitted: Callable, options: Mapping[str, Any]):
        self.jitted, self.options, self._compiled = jitted, dict(options), None

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)

    def __call__(self, *args):
        if self._compiled is None:
            self._compiled = self.jitted.lower(*args).compile(compiler_options=self.options)
        return self._compiled(*args)


def maybe_fast(jitted: Callable, fast: bool) -> Callable:
    """``jitted`` compiled with :data:`FAST_COMPILE_OPTIONS` when ``fast`` and the backend is the CPU; else as is."""
    if fast and jax.default_backend() == "cpu":
        return CompileOnce(jitted, FAST_COMPILE_OPTIONS)
    return jitted
