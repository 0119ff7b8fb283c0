"""The embedded default ResShift model: a small pixel-space Swin-UNet for x4 super-resolution trained by this
project on the training photographs of :mod:`ircore.photos` (``configs/resshift/embedded_x4.py``; the command
that reproduces it is in that file). ``python -m resshift_jax.sample`` with no arguments restores a held-out
photo with it."""
import pathlib

UNET_CHECKPOINT = pathlib.Path(__file__).with_name("sr_x4")  # parameter checkpoint (ircore.checkpoints)
