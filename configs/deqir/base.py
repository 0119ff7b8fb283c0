"""Defaults shared by every DeqIR restoration preset (``python -m deqir_jax.sample``).

``get_config(dataset)``: ``dataset`` is ``"imagenet"`` (guided-diffusion 256x256 unconditional prior),
``"celeba"`` (the CelebA-HQ DDIM-style prior) or ``"embedded"`` (this project's small prior, shipped in
``deqir_jax/embedded/prior``, on 64x64 images; its input defaults to the bundled held-out photo, so
``python -m deqir_jax.sample`` runs with no arguments). The task presets next to this file override
``degradation``.
"""
import pathlib

import ml_collections

from deqir_jax import solver_settings
from deqir_jax.embedded import PRIOR_CHECKPOINT
from ircore import photos
from ircore.config_utils import load_config_file

_HERE = pathlib.Path(__file__).parent
PRIORS = {"imagenet": "models/imagenet256_uncond.py", "celeba": "models/celeba_hq.py",
          "embedded": "models/embedded_small.py"}


def get_config(dataset: str = "imagenet") -> ml_collections.ConfigDict:
    if dataset not in PRIORS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(PRIORS)}")
    cfg = ml_collections.ConfigDict()
    cfg.dataset = dataset
    cfg.model = load_config_file(_HERE / PRIORS[dataset]).model
    cfg.checkpoint = ""  # orbax directory written by `python -m deqir_jax.convert`
    cfg.image_size = 256

    # Input / output.
    cfg.input = ""  # an image or a folder of images
    cfg.input_is_measurement = False  # True: `input` already holds y (e.g. a low-resolution image)
    cfg.reference = ""  # ground truth for metrics when `input` holds measurements
    cfg.resize = "center_crop"  # "center_crop" (short side to image_size, centre crop) | "none" (must fit)
    cfg.output = ""  # results folder; "" = a fresh outputs/deqir/run-<date>-<time> folder
    cfg.overwrite = False  # never replace earlier results unless asked
    cfg.seed = 666  # the official global seed; x_T and z are drawn per image from it
    cfg.score_lpips = True  # report LPIPS next to PSNR / SSIM when the lpips extra is installed
    cfg.compilation_cache = "auto"  # JAX's persistent compilation cache: "auto" (a per-user folder), a path, "off"

    # Degradation (deqir_jax.operators.make_operator) and measurement noise.
    cfg.degradation = ml_collections.ConfigDict()
    cfg.degradation.name = "sr_averagepooling"
    cfg.degradation.params = ml_collections.ConfigDict({"factor": 4})
    cfg.degradation.mask = ""  # inpainting: a mask image (white = observed) or a generator name
    cfg.sigma_y = 0.0  # std of Gaussian noise added to y on [-1, 1] (the official --sigma_y)

    # Sampling chain (official README: --timesteps 25 --etw 0.1, nw 0).
    cfg.sampler = "parallel"  # "parallel" (joint fixed point) | "sequential" (DDIM + DDNM baseline)
    cfg.timesteps = 25
    cfg.nw = 0.0
    cfg.etw = 0.1

    # Fixed-point solver: the fields of deqir_jax.solver_settings.SolverSettings, project default (the official
    # Anderson solve: --config.solver.method=anderson --config.solver.m=5 --config.solver.max_iter=15
    # --config.solver.stop=residual --config.solver.row_tol=0, i.e. solver_settings.OFFICIAL_ANDERSON).
    cfg.solver = solver_settings.to_config(solver_settings.DEFAULT)
    # At most 13 chain rows per prior call for the 256x256 priors: T = 100 then compiles to a 9.6 GB peak
    # (ADM 256, float32; 52 GB in one call), under a 16 GB device (benchmarks/deqir_memory.py).
    cfg.solver.chunk_size = 0 if dataset == "embedded" else 13

    # Optional initialisation optimisation of x_T through the implicit gradient.
    cfg.init_opt = ml_collections.ConfigDict()
    cfg.init_opt.steps = 0  # Adam steps on x_T; 0 = off (official n_epochs 2000)
    cfg.init_opt.loss = "measurement"  # "measurement" ||A x0 - y||^2 | "reference" | "oracle" (ground truth)
    cfg.init_opt.reference = ""  # image for loss=reference
    cfg.init_opt.learning_rate = 2e-5  # official Adam lr
    cfg.init_opt.early_stop = 0.1  # stop once the loss is below this (official)
    cfg.init_opt.gradient = "implicit"  # "implicit" (adjoint fixed point) | "phantom" (official one step)
    # the inner solve of every epoch (default: the official inversion settings, Anderson m 3, tol 1e-2)
    cfg.init_opt.solver = solver_settings.to_config(solver_settings.OFFICIAL_INVERSION)

    if dataset == "embedded":
        cfg.checkpoint = str(PRIOR_CHECKPOINT)
        cfg.image_size = 64
        cfg.input = str(photos.bundled_path(photos.DEFAULT))  # a held-out photo training never saw
    return cfg
