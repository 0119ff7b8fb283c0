r"""The official PyTorch networks for ``benchmarks/speed.py --official PATH``: timed on the same weights as ours.

Supported entries: ``adm256`` and ``adm_small`` (guided-diffusion's ``UNetModel`` from
``guided_diffusion.script_util.create_model``; PATH = a checkout of openai/guided-diffusion), ``swin``
(``models.unet.UNetModelSwin``), ``vq_encode`` / ``vq_decode`` (``ldm.models.autoencoder.VQModelTorch``; PATH = a
checkout of zsyOAOA/ResShift; when timm is not installed, the three names swin_transformer.py takes from it get
inference-equivalent stand-ins), and ``resshift``: the whole sampler (``models.script_util.create_gaussian_diffusion``
with the config's diffusion settings, ``p_sample_loop`` with both networks: bicubic upsampling, VQ encode, the
steps, VQ decode; timing and output shape only, as each side draws its own noise). Give both checkouts as
``PATH1,PATH2``. The DeqIR samplers are not compared.

How a comparison runs (:func:`compare`), per entry and batch, in float32:

1. Our side writes the inputs (NCHW). A worker subprocess (this file, ``worker`` sub-command; numpy + torch
   only, the official code on its path) is started with the glibc allocator settings
   ``MALLOC_MMAP_THRESHOLD_=4G MALLOC_TRIM_THRESHOLD_=4G MALLOC_TOP_PAD_=1G`` (they act only when set before
   the process starts). It builds the official module, gives it random weights (N(0, 1/fan_in) kernels, norm
   scales 1 + 0.1 N(0, 1), biases 0.1 N(0, 1): every layer active, so the output is not the zero of the
   zero-initialised output conv), writes its state dict and its output to a temporary folder and waits for
   commands on stdin.
2. This process converts the state dict with the project's converters (``deqir_jax.convert_keys``,
   ``resshift_jax.convert_keys``: strict, Swin buffers checked), runs our network (float32, compiled as
   the samplers compile: ``ircore.compiling.sampling_options``) on the same input and records the agreement
   (max |ours - official| and that over max |official|; ``vq_decode`` quantises, so a latent near a tie between
   two codes may pick another code on either side).
3. ``--pairs`` interleaved pairs: wait until the 1-minute load average is below ``--quiet-load`` (at most
   ``--quiet-timeout`` s, else a warning in the JSON), time ours (median of ``--repeats`` calls), then ask the
   worker for the same. The ratio ours / official is the median over pairs of the per-pair ratios.

Nothing of the official code is copied or committed: it is imported from PATH by the worker only.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

SUPPORTED = ("adm256", "adm_small", "swin", "vq_encode", "vq_decode", "resshift")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
              "MALLOC_TOP_PAD_": "1073741824"}
AGREE_REL = 1e-3  # max |ours - official| / max |official| below this counts as agreement (float32)


def create_model_kwargs(model_cfg: Any) -> dict:
    """guided-diffusion ``create_model`` keyword arguments of one of our ADM ``model`` sections (float32)."""
    keys = ("image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma", "class_cond",
            "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
            "use_scale_shift_norm", "dropout", "resblock_updown", "use_new_attention_order")
    kwargs = {k: model_cfg[k] for k in keys}
    kwargs["image_size"] = int(kwargs["image_size"])
    kwargs["use_fp16"] = False
    return kwargs


# ----------------------------------------------------------------------------------------------- worker side
def _stub_timm() -> None:
    """ResShift's swin_transformer.py imports DropPath, to_2tuple and trunc_normal_ from timm; when timm is not
    installed, stand-ins that act the same at inference (DropPath: identity in eval mode; the weights are
    overwritten, so the initialiser only has to exist)."""
    import types

    import torch

    try:
        import timm.models.layers  # noqa: F401  (the real one, when installed)
        return
    except ImportError:
        pass

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()

        def forward(self, x):
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = lambda t, std=1.0, **kw: torch.nn.init.normal_(t, 0.0, std)
    for name, mod in (("timm", types.ModuleType("timm")), ("timm.models", types.ModuleType("timm.models")),
                      ("timm.models.layers", layers)):
        sys.modules[name] = mod


def _official_module(kind: str, kwargs: dict):
    """(module, forward(module, inputs)) of the official network ``kind`` (the checkout is on sys.path)."""
    if kind == "adm":
        from guided_diffusion.script_util import create_model

        return create_model(**kwargs), lambda m, i: m(i["x"], i["t"])
    if kind == "swin":
        _stub_timm()
        from models.unet import UNetModelSwin

        return UNetModelSwin(**kwargs), lambda m, i: m(i["x"], i["t"], lq=i["lq"])
    from ldm.models.autoencoder import VQModelTorch

    if kind == "resshift":  # the whole sampler: bicubic x sf, VQ encode, the diffusion steps, VQ decode
        import torch
        from models.script_util import create_gaussian_diffusion

        _stub_timm()
        from models.unet import UNetModelSwin

        both = torch.nn.Module()
        both.unet, both.vq = UNetModelSwin(**kwargs["unet"]), VQModelTorch(**kwargs["vq"])
        diffusion = create_gaussian_diffusion(**kwargs["diffusion"])
        return both, lambda m, i: diffusion.p_sample_loop(y=i["lq"], model=m.unet, first_stage_model=m.vq,
                                                          clip_denoised=False, model_kwargs={"lq": i["lq"]})
    if kind == "vq_encode":
        return VQModelTorch(**kwargs), lambda m, i: m.encode(i["x"])
    return VQModelTorch(**kwargs), lambda m, i: m.decode(i["x"])


def worker(argv: list[str]) -> None:
    import argparse

    try:
        import torch
    except ImportError:
        raise SystemExit("error: the official side needs PyTorch: pip install torch (CPU build is enough)") from None

    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True)
    parser.add_argument("--kind", required=True, choices=("adm", "swin", "vq_encode", "vq_decode", "resshift"))
    parser.add_argument("--kwargs", required=True, help="constructor kwargs (JSON)")
    parser.add_argument("--workdir", required=True, help="inputs.npz in; state.npz and io.npz out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in reversed(args.official.split(",")):
        sys.path.insert(0, path)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    try:
        model, forward = _official_module(args.kind, json.loads(args.kwargs))
    except ImportError as err:  # one line, read by the parent as the row's error
        raise SystemExit(f"error: cannot import the official {args.kind} code from --official {args.official} "
                         f"({err}); give a checkout of openai/guided-diffusion or zsyOAOA/ResShift") from None
    model = model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    model = model.to(device)
    work = pathlib.Path(args.workdir)
    np.savez(work / "state.npz", **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    with np.load(work / "inputs.npz") as f:
        inputs = {k: torch.from_numpy(f[k]).to(device) for k in f.files}

    def call():
        with torch.inference_mode():
            out = forward(model, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    out = call()
    np.savez(work / "io.npz", out=out.float().cpu().numpy())
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        repeats, warmup = int(cmd[1]), int(cmd[2])
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times_s": times}), flush=True)


# ----------------------------------------------------------------------------------------------- our side
def wait_quiet(threshold: float, timeout: float) -> dict:
    """Sleeps until the 1-minute load average is below ``threshold`` or ``timeout`` s have passed."""
    start = time.perf_counter()
    while os.getloadavg()[0] >= threshold and time.perf_counter() - start < timeout:
        time.sleep(1.0)
    load = os.getloadavg()[0]
    out = {"waited_s": time.perf_counter() - start, "loadavg": load, "quiet": load < threshold}
    if not out["quiet"]:
        out["warning"] = f"load average {load:.2f} still >= {threshold:g} after {timeout:g} s; timed anyway"
    return out


def _read_json_line(proc: subprocess.Popen) -> dict:
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"official worker exited (code {proc.poll()}); see its stderr above")
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)


def _plain(value: Any) -> Any:
    """A config value as JSON-able Python (ConfigDicts -> dicts, tuples -> lists)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def our_side(name: str, batch: int, sizes: Any, speed: Any, state: dict) -> dict:
    """Kind, official constructor kwargs, NCHW inputs, and (once ``state`` is given) our params and function."""
    from deqir_jax import convert_keys as deqir_keys, models
    from resshift_jax import convert_keys as resshift_keys, networks
    from resshift_jax.models import vq

    import jax

    rng = np.random.default_rng(0)
    if name in ("adm256", "adm_small"):
        model_cfg = speed.adm_config(name, sizes, "float32")
        size = int(model_cfg.image_size) if name == "adm256" else sizes.small_size
        inputs = {"x": rng.standard_normal((batch, 3, size, size), np.float32), "t": np.full((batch,), 500, np.int64)}
        side = {"kind": "adm", "kwargs": create_model_kwargs(model_cfg), "inputs": inputs}
        if state is not None:
            model = models.model_from_config(model_cfg)
            side["params"] = deqir_keys.convert_adm_state_dict(state, model_cfg)
            side["fn"] = lambda p, x, t: model.apply({"params": p}, x, t)
        return side
    cfg = speed.resshift_config(sizes, "float32")
    if name == "swin":
        s = sizes.latent
        inputs = {"x": rng.standard_normal((batch, int(cfg.model.in_channels), s, s), np.float32),
                  "t": np.full((batch,), 2, np.int64), "lq": rng.standard_normal((batch, 3, s, s), np.float32)}
        kwargs = {k: v for k, v in _plain(cfg.model).items() if k != "dtype"}
        side = {"kind": "swin", "kwargs": kwargs, "inputs": inputs}
        if state is not None:
            net = networks.unet(cfg, "float32")
            side["params"] = resshift_keys.convert_unet_state_dict(state, cfg)
            side["fn"] = lambda p, x, t, lq: net.apply({"params": p}, x, t, lq=lq)
        return side
    params = cfg.autoencoder.params
    kwargs = {"ddconfig": _plain(params.ddconfig), "n_embed": int(params.n_embed), "embed_dim": int(params.embed_dim)}
    if name == "resshift":
        from resshift_jax.pipeline import make_restorer

        s = sizes.latent
        inputs = {"lq": rng.uniform(-1.0, 1.0, (batch, 3, s, s)).astype(np.float32)}
        unet_kwargs = {k: v for k, v in _plain(cfg.model).items() if k != "dtype"}
        side = {"kind": "resshift", "inputs": inputs, "compare_outputs": False,
                "kwargs": {"unet": unet_kwargs, "vq": kwargs, "diffusion": _plain(cfg.diffusion)}}
        if state is not None:
            restorer = make_restorer(cfg)
            part = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
            side["params"] = {"unet": resshift_keys.convert_unet_state_dict(part("unet."), cfg),
                              "vq": resshift_keys.convert_vq_state_dict(part("vq."), cfg.autoencoder)}
            key = jax.random.PRNGKey(0)
            side["fn"] = lambda p, lq: restorer.fn(p["unet"], p["vq"], lq, None, key, None)
        return side
    shape = (batch, 3, sizes.hq, sizes.hq) if name == "vq_encode" else (batch, int(params.embed_dim), sizes.latent,
                                                                        sizes.latent)
    side = {"kind": name, "kwargs": kwargs, "inputs": {"x": rng.standard_normal(shape, np.float32)}}
    if state is not None:
        ae = vq.model_from_config(cfg.autoencoder, dtype="float32")
        side["params"] = resshift_keys.convert_vq_state_dict(state, cfg.autoencoder)
        method = vq.VQModel.encode if name == "vq_encode" else vq.VQModel.decode
        side["fn"] = lambda p, x: ae.apply({"params": p}, x, method=method)
    return side


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else (a.astype(np.int32) if a.dtype == np.int64 else a)


def compare_one(name: str, batch: int, args: Any, sizes: Any, speed: Any) -> dict:
    import jax

    threshold = args.quiet_load if args.quiet_load is not None else max((os.cpu_count() or 2) / 2, 1.0)
    row: dict = {"name": name, "batch": batch, "dtype": "float32", "official_device": args.official_device,
                 "quiet_load": threshold, "malloc_env": MALLOC_ENV}
    side = our_side(name, batch, sizes, speed, None)
    with tempfile.TemporaryDirectory(prefix="speed-official-") as work:
        np.savez(os.path.join(work, "inputs.npz"), **side["inputs"])
        env = {**os.environ, **MALLOC_ENV}
        env["PYTHONPATH"] = os.pathsep.join(str(args.official).split(",") + [env.get("PYTHONPATH", "")])
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "worker", "--official", str(args.official),
               "--kind", side["kind"], "--kwargs", json.dumps(side["kwargs"]), "--device", args.official_device,
               "--workdir", work]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = _read_json_line(proc)
            row.update(torch_version=ready["torch"], torch_threads=ready["threads"])
            with np.load(os.path.join(work, "state.npz")) as f:
                state = {k: f[k] for k in f.files}
            with np.load(os.path.join(work, "io.npz")) as f:
                ref = f["out"]
            side = our_side(name, batch, sizes, speed, state)
            inputs = tuple(jax.device_put(_nhwc(v)) for v in side["inputs"].values())
            params = jax.device_put(side["params"])
            options = speed.compile_options(sizes)  # what the samplers compile with (ircore.compiling)
            compiled = jax.jit(side["fn"]).lower(params, *inputs).compile(compiler_options=options)
            call_args = (params,) + inputs
            ours = np.transpose(np.asarray(compiled(*call_args), np.float32), (0, 3, 1, 2))
            if ours.shape != ref.shape:
                raise RuntimeError(f"output shapes differ: ours {ours.shape}, official {ref.shape}")
            if side.get("compare_outputs", True):
                diff = float(np.abs(ours - ref).max())
                scale = float(np.abs(ref).max())
                row.update(max_abs_diff=diff, max_abs_official=scale, rel_diff=diff / max(scale, 1e-12),
                           agree=diff / max(scale, 1e-12) < AGREE_REL)
            else:  # a sampler: each side draws its own noise, so only the shapes can agree
                row.update(rel_diff=None, agree=None, agreement="not compared: each side draws its own noise")
            pairs = []
            for i in range(args.pairs):
                quiet = wait_quiet(threshold, args.quiet_timeout)
                warm = args.warmup if i == 0 else 1
                ours_t = speed.timed_calls(compiled, call_args, warm, args.repeats)
                proc.stdin.write(f"time {args.repeats} {warm}\n")
                proc.stdin.flush()
                off_t = _read_json_line(proc)["times_s"]
                pair = {**quiet, "ours_s": statistics.median(ours_t), "official_s": statistics.median(off_t),
                        "ours_times_s": ours_t, "official_times_s": off_t}
                pair["ratio"] = pair["ours_s"] / pair["official_s"]
                pairs.append(pair)
            row["pairs"] = pairs
            row["ours_s"] = statistics.median(p["ours_s"] for p in pairs)
            row["official_s"] = statistics.median(p["official_s"] for p in pairs)
            row["ratio_ours_over_official"] = statistics.median(p["ratio"] for p in pairs)
            warnings = [p["warning"] for p in pairs if "warning" in p]
            if warnings:
                row["warnings"] = warnings
        finally:
            if proc.poll() is None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return row


def compare(args: Any, sizes: Any, speed: Any) -> list:
    """One row per selected entry and batch: agreement, interleaved timings and the ratio ours / official."""
    rows = []
    print(f"\nofficial comparison ({args.official}), float32, {args.pairs} interleaved pairs, "
          f"{args.repeats} calls each")
    print(f"{'entry':<12} {'B':>3} {'max|d|/max|ref|':>15} {'ours ms':>9} {'official ms':>11} {'ours/official':>13} "
          f"{'quiet':>5}")
    for name in args.entries:
        for batch in args.batches:
            if name not in SUPPORTED:
                rows.append({"name": name, "batch": batch, "skipped": "no official module wired up "
                             f"(supported: {', '.join(SUPPORTED)})"})
                print(f"{name:<12} {batch:>3} skipped: {rows[-1]['skipped']}", flush=True)
                continue
            try:
                row = compare_one(name, batch, args, sizes, speed)
                agreement = "-" if row["rel_diff"] is None else f"{row['rel_diff']:.2e}"
                print(f"{name:<12} {batch:>3} {agreement:>15} {row['ours_s'] * 1e3:>9.2f} "
                      f"{row['official_s'] * 1e3:>11.2f} {row['ratio_ours_over_official']:>13.3f} "
                      f"{'no' if row.get('warnings') else 'yes':>5}", flush=True)
            except Exception as err:  # noqa: BLE001 - recorded, the other entries still run
                row = {"name": name, "batch": batch, "error": f"{type(err).__name__}: {err}"}
                print(f"{name:<12} {batch:>3} error: {row['error']}", flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
    else:
        raise SystemExit("used by benchmarks/speed.py --official (the 'worker' sub-command runs the official side)")
