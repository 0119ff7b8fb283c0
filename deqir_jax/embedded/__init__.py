"""The embedded default prior: a small unconditional guided-diffusion UNet trained by this project on the
training photographs of :mod:`ircore.photos` (``configs/deqir/embedded_prior.py``; the command that
reproduces it is in that file). ``python -m deqir_jax.sample`` with no arguments restores a held-out photo
with it."""
import pathlib

PRIOR_CHECKPOINT = pathlib.Path(__file__).with_name("prior")  # parameter checkpoint (ircore.checkpoints)
