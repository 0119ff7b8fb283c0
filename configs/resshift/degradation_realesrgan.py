"""Training-data degradations of the released ResShift models, as ``ml_collections`` configs.

``get_config(name)``; ``name`` one of:

* ``realsr_x4`` (default): Real-ESRGAN second-order pipeline of ``configs/realsr_swinunet_realesrgan256_journal.yaml``
  (v3; the v1/v2 config ``realsr_swinunet_realesrgan256.yaml`` has identical values). Keys are the official
  ones: the ``degradation`` section plus the kernel keys of ``data.train.params``.
* ``realsr_x2``: the same with ``sf = 2`` (``realsr_realesrgan256_x2.yaml``).
* ``imagenet_test``: the milder first-order set of ``configs/degradation_testing_realesrgan.yaml`` used to
  build the ImageNet-Test LQ images.
* ``faceir``: GFPGAN face degradation of ``configs/faceir_gfpgan512_lpips.yaml`` (``data.train.params``).
* ``inpaint``: LaMa mask mixture of ``configs/inpaint_lama256_{imagenet,face}.yaml`` (``mask_kwargs``; both
  files use the same values).

Kernel sizes: ResShift's ``RealESRGANDataset`` draws the blur size from ``range(3, blur_kernel_size, 2)``
(3..19 for stage 1, 3..13 for stage 2 and the final sinc) and pads stage-2 / final kernels to
``blur_kernel_size2`` (15); the upstream Real-ESRGAN dataset uses 7..21 everywhere, padded to 21. The lists are
written out in ``kernel_sizes`` / ``kernel_sizes2`` so either can be chosen. ``jpeg_tables`` and friends select
the JPEG emulation (see ``resshift_jax/degradations/jpeg.py``); the official pipeline uses DiffJPEG.
"""
import ml_collections

_ALL_KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _odd_sizes(grid: int) -> tuple:
    return tuple(range(3, grid, 2))


def _realsr(sf: int) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.kind = "realesrgan"
    cfg.sf = sf
    cfg.gt_size = 256
    # first degradation: blur kernel (data.train.params)
    cfg.blur_kernel_size = 21
    cfg.kernel_sizes = _odd_sizes(21)
    cfg.kernel_list = _ALL_KERNELS
    cfg.kernel_prob = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    cfg.sinc_prob = 0.1
    cfg.blur_sigma = (0.2, 3.0)
    cfg.betag_range = (0.5, 4.0)
    cfg.betap_range = (1.0, 2.0)
    # second degradation: blur kernel
    cfg.blur_kernel_size2 = 15
    cfg.kernel_sizes2 = _odd_sizes(15)
    cfg.kernel_list2 = _ALL_KERNELS
    cfg.kernel_prob2 = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    cfg.sinc_prob2 = 0.1
    cfg.blur_sigma2 = (0.2, 1.5)
    cfg.betag_range2 = (0.5, 4.0)
    cfg.betap_range2 = (1.0, 2.0)
    # final sinc filter (size from kernel_sizes2, padded to blur_kernel_size2)
    cfg.final_sinc_prob = 0.8
    # first degradation process (degradation section)
    cfg.resize_prob = (0.2, 0.7, 0.1)  # up, down, keep
    cfg.resize_range = (0.15, 1.5)
    cfg.gaussian_noise_prob = 0.5
    cfg.noise_range = (1.0, 30.0)
    cfg.poisson_scale_range = (0.05, 3.0)
    cfg.gray_noise_prob = 0.4
    cfg.jpeg_range = (30.0, 95.0)
    # second degradation process
    cfg.second_order_prob = 0.5
    cfg.second_blur_prob = 0.8
    cfg.resize_prob2 = (0.3, 0.4, 0.3)
    cfg.resize_range2 = (0.3, 1.2)
    cfg.gaussian_noise_prob2 = 0.5
    cfg.noise_range2 = (1.0, 25.0)
    cfg.poisson_scale_range2 = (0.05, 2.5)
    cfg.gray_noise_prob2 = 0.4
    cfg.jpeg_range2 = (30.0, 95.0)
    # final [resize + sinc] / JPEG order: resize first with this probability (official: random.random() < 0.5)
    cfg.final_resize_first_prob = 0.5
    cfg.resize_back = False
    cfg.use_sharp = False
    # JPEG emulation: DiffJPEG as in basicsr
    cfg.jpeg_tables = "diffjpeg"
    cfg.jpeg_chroma_upsampling = "nearest"
    cfg.jpeg_pad = "zeros"
    return cfg


def _imagenet_test() -> ml_collections.ConfigDict:
    cfg = _realsr(4)
    cfg.blur_kernel_size = 13
    cfg.kernel_sizes = _odd_sizes(13)
    cfg.kernel_prob = (0.6, 0.4, 0.0, 0.0, 0.0, 0.0)
    cfg.sinc_prob = 0.1
    cfg.blur_sigma = (0.2, 0.8)
    cfg.betag_range = (1.0, 1.5)
    cfg.betap_range = (1.0, 1.2)
    cfg.blur_kernel_size2 = 7
    cfg.kernel_sizes2 = _odd_sizes(7)
    cfg.kernel_prob2 = (0.6, 0.4, 0.0, 0.0, 0.0, 0.0)
    cfg.sinc_prob2 = 0.0
    cfg.blur_sigma2 = (0.2, 0.5)
    cfg.betag_range2 = (0.5, 0.8)
    cfg.betap_range2 = (1.0, 1.2)
    cfg.final_sinc_prob = 0.2
    cfg.resize_range = (0.5, 1.5)
    cfg.noise_range = (1.0, 15.0)
    cfg.poisson_scale_range = (0.05, 0.3)
    cfg.jpeg_range = (70.0, 95.0)
    cfg.second_order_prob = 0.0
    cfg.second_blur_prob = 0.2
    cfg.resize_range2 = (0.8, 1.2)
    cfg.noise_range2 = (1.0, 10.0)
    cfg.poisson_scale_range2 = (0.05, 0.2)
    cfg.jpeg_range2 = (80.0, 100.0)
    return cfg


def _faceir() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.kind = "gfpgan"
    cfg.out_size = 512
    cfg.blur_kernel_size = 41
    cfg.kernel_list = ("iso", "aniso")
    cfg.kernel_prob = (0.5, 0.5)
    cfg.blur_sigma = (0.1, 15.0)
    cfg.downsample_range = (0.8, 32.0)
    cfg.noise_range = (0.0, 20.0)
    cfg.jpeg_range = (30.0, 100.0)
    cfg.gray_prob = 0.01
    cfg.gt_gray = True
    # color_jitter_prob / color_jitter_pt_prob are None (off) in the official config.
    # JPEG emulation of OpenCV/libjpeg (the reference calls cv2.imencode)
    cfg.jpeg_tables = "ijg"
    cfg.jpeg_chroma_upsampling = "fancy"
    cfg.jpeg_pad = "edge"
    return cfg


def _inpaint() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.kind = "lama_masks"
    cfg.irregular_proba = 1.0
    cfg.irregular_kwargs = ml_collections.ConfigDict(
        {"max_angle": 4, "max_len": 200, "max_width": 100, "max_times": 5, "min_times": 1})
    cfg.box_proba = 1.0
    cfg.box_kwargs = ml_collections.ConfigDict(
        {"margin": 10, "bbox_min_size": 30, "bbox_max_size": 150, "max_times": 4, "min_times": 1})
    cfg.outpainting_proba = 1.0
    cfg.outpainting_kwargs = ml_collections.ConfigDict({
        "min_padding_percent": 0.04, "max_padding_percent": 0.25,
        "left_padding_prob": 0.5, "top_padding_prob": 0.5,
        "right_padding_prob": 0.5, "bottom_padding_prob": 0.5,
    })
    return cfg


CONFIGS = {
    "realsr_x4": lambda: _realsr(4),
    "realsr_x2": lambda: _realsr(2),
    "imagenet_test": _imagenet_test,
    "faceir": _faceir,
    "inpaint": _inpaint,
}


def get_config(name: str = "realsr_x4") -> ml_collections.ConfigDict:
    if name not in CONFIGS:
        raise ValueError(f"unknown degradation config {name!r}; expected one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]()
    cfg.name = name
    return cfg
