"""Compiling jitted functions with extra XLA options (the trainer's fast CPU compiles for tests / smoke runs)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

# LLVM optimisations off: about 2x faster CPU compilation, slower steps.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


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
