"""Training-data degradations of ResShift in JAX: Real-ESRGAN second-order pipeline, bicubic SR, GFPGAN face
degradation, LaMa inpainting masks. See the submodules; the main entry points are re-exported here."""
from resshift_jax.degradations.face import FaceSpec, apply_face, face_degrade, face_degrade_single, sample_face_params
from resshift_jax.degradations.jpeg import jpeg_compress, jpeg_roundtrip, quality_tables
from resshift_jax.degradations.kernels import (
    BlurKernelSpec,
    circular_lowpass_kernel,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    sample_blur_kernel,
    sample_final_sinc_kernel,
)
from resshift_jax.degradations.masks import LamaMaskSpec, inpainting_inputs, lama_mask, lama_masks
from resshift_jax.degradations.pipeline import (
    RealESRGANSpec,
    apply_realesrgan,
    bicubic_degrade,
    realesrgan_degrade,
    realesrgan_degrade_single,
    realesrgan_degrade_unit,
    sample_realesrgan_params,
)
