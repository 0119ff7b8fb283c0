"""Default ``train`` and ``data`` config sections (data only: imports nothing but ``ml_collections``).

Config files build on these (``cfg.train = train_config.train_defaults()``) and override fields; the engine
(:mod:`ircore.trainer`, :mod:`ircore.data`) reads them.
"""
import ml_collections


def train_defaults() -> ml_collections.ConfigDict:
    """The ``train`` section every task config carries (ResShift journal recipe as defaults)."""
    return ml_collections.ConfigDict({
        "seed": 123456,
        "global_batch": 96,
        "accum_steps": 1,  # micro-batches per step (gradient accumulation); each one is global_batch / accum_steps
        "total_steps": 400_000,
        "lr": 5e-5,
        "lr_min": 2e-5,
        "warmup_steps": 5000,
        "lr_schedule": "cosine",  # "cosine" (journal configs) or "constant" (v1/v2) after the linear warm-up
        "adam_b1": 0.9,
        "adam_b2": 0.999,
        "adam_eps": 1e-8,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,  # global-norm clipping; 0 = off (the official trainer does not clip)
        "ema_decay": 0.999,
        "ema_warmup": False,  # decay min(ema_decay, (1 + step) / (10 + step)): short runs forget the init
        "mesh_shape": (-1, 1),  # (data, fsdp); -1 = all remaining devices
        "fsdp_min_size": 2**18,  # leaves with at least this many elements are sharded over "fsdp"
        "log_every": 100,
        "checkpoint_every": 5000,
        "keep_checkpoints": 3,
        "async_checkpoints": True,
        "eval_every": 10_000,
        "tensorboard": True,
        "progress_bar": "auto",  # console tqdm bar (steps/s, ETA) on process 0: "auto" (terminal only), "on", "off"
        "max_inflight_steps": 2,  # steps dispatched ahead of the host (more is no faster; unbounded async
                                  # dispatch of multi-process CPU collectives can deadlock)
        "fast_compile": False,  # CPU only: compile with LLVM optimisations off (tests / smoke runs: ~2x faster
                                # compilation, slower steps); ignored on GPU / TPU
    })


def data_defaults() -> ml_collections.ConfigDict:
    """The ``data`` section (:mod:`ircore.data`): a training source and a held-out validation source."""
    source = {
        "source": "folder",  # "folder", "tfds" or "photos"
        "folder": "",  # folder (searched recursively) or .txt file list
        "tfds_name": "",
        "tfds_split": "train",
        "tfds_data_dir": None,
        "image_key": "image",
        "photos_split": "train",  # source="photos": "train" or "heldout" (ircore.photos)
    }
    return ml_collections.ConfigDict({
        **source,
        "crop_size": 256,
        "rescale": True,  # square crop of side max(min(h, w), crop_size), area-resized to crop_size
        "random_scale": False,  # with rescale: side log-uniform in [crop_size, max(min(h, w), crop_size)]
        "native_fraction": 0.0,  # with random_scale: this fraction of crops at native pixels (side crop_size)
        "hflip": True,
        "num_workers": 0,  # grain worker processes (0 = in the main process)
        "num_threads": 4,  # reader threads per process / worker
        "prefetch": 4,  # batches buffered ahead
        "eval": {**source, "tfds_split": "validation", "num_images": 8, "batch": 8},
    })
