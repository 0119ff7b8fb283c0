"""The one home of DeqIR's fixed-point solver settings: :class:`SolverSettings` and its named presets.

Config files (``cfg.solver``, ``cfg.init_opt.solver``) hold exactly these fields (:func:`to_config`), and
:func:`from_config` reads them back, so a setting reaches the solver in two changes of form. Methods:

* ``"anderson"``: the official DeqIR Anderson acceleration (:func:`deqir_jax.anderson.anderson_solve`;
  per-row mixing, joint stopping norm, ``m``, ``lam``, ``beta``, ``tol``, ``max_iter`` map evaluations).
* ``"picard"``: fixed-point iteration of the joint map (:func:`deqir_jax.triangular.triangular_solve` with
  ``m = 1``): exact after T rounds.
* ``"triangular"``: triangular Anderson (ParaTAA-style causal mixing with history ``m``) in the same engine.

``picard`` and ``triangular`` also take ``window`` (live rows per round, 0 = all T), ``row_tol`` (freeze
leading rows whose change is below it, in units of that step's signal level sqrt(abar)), ``warm_start``
(rounds of a coarse sequential chain first), ``stop`` (``"residual"``: joint relative residual below
``tol``; ``"x0"``: x0 moved less than ``x0_tol`` RMS in a round) and ``max_iter`` (parallel rounds; 0 = T + 1,
after which the chain solves are exact: the first live row is exact every round).
``chunk_size`` bounds the rows of one network call (0 = the whole window in one call).
"""
from __future__ import annotations

import dataclasses
from typing import Any

METHODS = ("anderson", "picard", "triangular")
STOPS = ("residual", "x0")


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Static settings of one fixed-point solve (hashable: one compile per distinct value).

    The defaults are the project's default sampler (see ``benchmarks/deqir_solvers.py`` for how it was
    chosen); :data:`OFFICIAL_ANDERSON` and :data:`OFFICIAL_INVERSION` are the official code's solves.
    """

    method: str = "triangular"
    m: int = 3
    lam: float = 1e-3
    beta: float = 1.0
    tol: float = 1e-3
    max_iter: int = 0
    window: int = 0
    row_tol: float = 1e-2
    warm_start: int = 0
    stop: str = "x0"
    x0_tol: float = 2e-3
    chunk_size: int = 0

    def __post_init__(self):
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {METHODS}, got {self.method!r}")
        if self.stop not in STOPS:
            problems.append(f"stop must be one of {STOPS}, got {self.stop!r}")
        low = 2 if self.method == "anderson" else 0
        if not isinstance(self.max_iter, int) or self.max_iter < low:
            problems.append(f"max_iter must be an int >= {low}{'' if low else ' (0 = T + 1 rounds)'}, "
                            f"got {self.max_iter!r}")
        if self.m < (2 if self.method == "anderson" else 1):
            problems.append(f"m (history) must be >= {2 if self.method == 'anderson' else 1}, got {self.m}")
        for name in ("lam", "tol", "row_tol", "x0_tol"):
            if not getattr(self, name) >= 0.0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.beta <= 1.0:
            problems.append(f"beta must be in (0, 1], got {self.beta}")
        if self.window < 0:
            problems.append(f"window must be >= 0 rows (0 = all), got {self.window}")
        if self.warm_start < 0:
            problems.append(f"warm_start must be >= 0 rounds, got {self.warm_start}")
        if self.chunk_size < 0:
            problems.append(f"chunk_size must be >= 0 (0 = no bound), got {self.chunk_size}")
        if self.method == "anderson" and (self.window or self.warm_start or self.stop != "residual"):
            problems.append("window, warm_start and stop='x0' need method 'picard' or 'triangular' "
                            "(the official Anderson solve has none of them)")
        if problems:
            raise ValueError("solver settings: " + "; ".join(problems))

    def window_rows(self, T: int) -> int:
        """Live rows per round for a chain of T rows (``window`` 0 or >= T: all)."""
        return T if self.window == 0 or self.window >= T else self.window

    def rounds(self, T: int) -> int:
        """The round budget for a chain of T rows (``max_iter`` 0: T + 1, enough for the exact answer)."""
        return self.max_iter or T + 1


# The official DeqIR sampling solve (functions/ddim_anderson.py; README --timesteps 25).
OFFICIAL_ANDERSON = SolverSettings(method="anderson", m=5, lam=1e-3, beta=1.0, tol=1e-3, max_iter=15,
                                   window=0, row_tol=0.0, warm_start=0, stop="residual")
# The official x_T optimisation's inner solve (latent_space_opt_anderson.py).
OFFICIAL_INVERSION = dataclasses.replace(OFFICIAL_ANDERSON, m=3, beta=0.9, tol=1e-2)
DEFAULT = SolverSettings()

_FIELDS = tuple(f.name for f in dataclasses.fields(SolverSettings))


def to_config(settings: SolverSettings = DEFAULT):
    """An ``ml_collections.ConfigDict`` with exactly the fields of ``settings`` (config keys = field names)."""
    import ml_collections  # noqa: PLC0415 (configs import this module; keep it light)

    return ml_collections.ConfigDict(dataclasses.asdict(settings))


def from_config(cfg: Any) -> SolverSettings:
    """SolverSettings from a ConfigDict / mapping with these field names; an unknown key is an error."""
    data = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown solver setting(s) {', '.join(unknown)}; the fields are {', '.join(_FIELDS)}")
    types = {f.name: type(getattr(DEFAULT, f.name)) for f in dataclasses.fields(SolverSettings)}
    return SolverSettings(**{k: types[k](v) for k, v in data.items()})
