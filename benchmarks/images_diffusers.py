"""Baseline for the digits benchmark: a stock Hugging Face diffusers ``UNet2DModel`` trained with DDPM
(eps-prediction MSE, 1000 linear-beta timesteps, AdamW, EMA of the weights) on unidm's digits data, measured with
the protocol of ``benchmarks/images.py``, so that unidm's digits presets can be compared with it.

    pip install diffusers   # optional: only this script uses it; unidm itself never imports diffusers
    python benchmarks/images_diffusers.py [--max-minutes 12] [--eval-every 100] [--lr 1e-3] [--threads 1]

Every probe draws as many samples as there are training images (1438) from the EMA model with DPM-Solver++(2M)
(``DPMSolverMultistepScheduler``, ``--probe-nfe`` steps, one NFE each), clamps them to [-1, 1] and takes the
Fréchet distance of their features (unidm's digits feature network) to the whole held-out split; the floor is the
whole training split's distance to it. Training time excludes the probes. Because the CPU may be shared, progress
is also counted in images seen (steps x batch), and the training speed is timed on its own (``--timing-steps``
steps on a throwaway copy of the model, after warm-up), so a time to a threshold can be estimated as
images-to-threshold / images-per-second. At the end the EMA model is scored at 10, 20 and 50 NFE of DPM-Solver++(2M)
and 20 of DDIM. The table goes to stdout and the JSON to ``benchmarks/results/images-diffusers.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from unidm.data.images import digits_dataset
from unidm.evaluation.feature_net import feature_net_for, features
from unidm.evaluation.image_metrics import frechet_distance, plot_image_grid

from images import THRESHOLDS  # benchmarks/images.py (this folder): the thresholds this baseline is compared at

try:
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UNet2DModel,
    )
    from diffusers.training_utils import EMAModel
except ImportError:  # pragma: no cover
    sys.exit("benchmarks/images_diffusers.py needs Hugging Face diffusers: pip install diffusers")

#: ~4.0 M parameters: three levels (8x8, 4x4, 2x2), attention at 4x4 and 2x2 as in diffusers' training tutorial
UNET = {"sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 2,
        "block_out_channels": (32, 64, 128), "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")}
SAMPLERS = {"dpmpp_2m": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}


def train_step(model, opt, noise_sched, x: torch.Tensor) -> float:
    noise = torch.randn_like(x)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(x),))
    loss = F.mse_loss(model(noise_sched.add_noise(x, noise, t), t).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def ddpm_training(model, lr: float, warmup: int, ema_decay: float):
    """The baseline's optimizer, warm-up schedule, EMA and DDPM noise schedule for ``model``:
    ``(noise_sched, opt, lr_sched, ema)``."""
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    ema = EMAModel(model.parameters(), decay=ema_decay, use_ema_warmup=True)
    return noise_sched, opt, lr_sched, ema


def training_steps(model, noise_sched, opt, lr_sched, ema, x: torch.Tensor, batch_size: int, generator):
    """DDPM steps over epochs of random permutations of ``x`` drawn from ``generator`` (the last partial batch of an
    epoch is dropped); yields ``(step, train_seconds, loss)`` after each step, and the caller decides when to stop."""
    n = len(x)
    perm, pos, step, seconds = torch.randperm(n, generator=generator), 0, 0, 0.0
    while True:
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        t0 = time.perf_counter()
        model.train()
        loss = train_step(model, opt, noise_sched, x[perm[pos:pos + batch_size]])
        lr_sched.step()
        ema.step(model.parameters())
        seconds += time.perf_counter() - t0
        pos, step = pos + batch_size, step + 1
        yield step, seconds, loss


@torch.no_grad()
def draw(model, noise_sched, n: int, nfe: int, sampler: str = "dpmpp_2m", seed: int = 0) -> tuple[torch.Tensor, float]:
    """``n`` samples in one batch with ``nfe`` steps of ``sampler``; returns samples in [-1, 1] and seconds."""
    t0 = time.perf_counter()
    sched = SAMPLERS[sampler].from_config(noise_sched.config)
    sched.set_timesteps(nfe)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    model.eval()
    for t in sched.timesteps:
        x = sched.step(model(x, t).sample, t, x).prev_sample
    return x.clamp(-1, 1), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-minutes", type=float, default=12.0, help="training time (probes excluded)")
    p.add_argument("--eval-every", type=int, default=100, help="optimizer steps between Fréchet probes")
    p.add_argument("--probe-nfe", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = digits_dataset()
    n, bs = len(data.train), args.batch_size
    net = feature_net_for(data, verbose=True)
    f_test = features(net, data.test)
    floor = frechet_distance(features(net, data.train), f_test)

    def frechet(x: torch.Tensor) -> float:
        return frechet_distance(features(net, x), f_test)

    model = UNet2DModel(**UNET)
    params = sum(q.numel() for q in model.parameters())
    noise_sched, opt, lr_sched, ema = ddpm_training(model, args.lr, args.warmup, args.ema_decay)
    print(f"diffusers UNet2DModel {params / 1e6:.3f} M parameters; Fréchet floor {floor:.3f} ({n} training vs "
          f"{len(data.test)} held-out images); {args.threads} thread(s)", flush=True)

    # training speed on a throwaway copy: 3 warm-up steps, then --timing-steps timed ones
    m2 = copy.deepcopy(model)
    o2 = torch.optim.AdamW(m2.parameters(), lr=args.lr)
    m2.train()
    for i in range(3 + args.timing_steps):
        if i == 3:
            t0 = time.perf_counter()
        train_step(m2, o2, noise_sched, data.train[torch.randint(0, n, (bs,))])
    train_ips = args.timing_steps * bs / (time.perf_counter() - t0)
    del m2, o2
    print(f"training speed: {train_ips:.1f} images/s (batch {bs}, {args.timing_steps} steps after warm-up)", flush=True)

    probe = copy.deepcopy(model)
    history: list[dict] = []
    reached: dict = {}
    g = torch.Generator().manual_seed(args.seed)
    step, train_seconds = 0, 0.0

    def run_probe(loss: float) -> None:
        ema.copy_to(probe.parameters())
        x, _ = draw(probe, noise_sched, n, args.probe_nfe)
        fd = frechet(x)
        row = {"step": step, "images_seen": step * bs, "train_seconds": train_seconds, "frechet": fd, "loss": loss}
        history.append(row)
        for k in THRESHOLDS:
            if fd <= k * floor and str(k) not in reached:
                reached[str(k)] = {"step": step, "images_seen": step * bs, "train_seconds": train_seconds,
                                   "est_seconds": step * bs / train_ips}
        print(f"  step {step:5d}  images {step * bs:7d}  train {train_seconds:6.1f} s  loss {loss:.4f}  "
              f"Fréchet {fd:.3f} (floor {floor:.3f})", flush=True)

    losses: list[float] = []
    for step, train_seconds, loss in training_steps(model, noise_sched, opt, lr_sched, ema, data.train, bs, g):
        losses.append(loss)
        if step % args.eval_every == 0:
            run_probe(sum(losses[-50:]) / len(losses[-50:]))
        if train_seconds >= 60 * args.max_minutes:
            break
    if not history or history[-1]["step"] != step:
        run_probe(sum(losses[-50:]) / len(losses[-50:]))

    rows = []
    for sampler, nfe in (("dpmpp_2m", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 50), ("ddim", 20)):
        x, secs = draw(probe, noise_sched, n, nfe, sampler)
        fd = frechet(x)
        rows.append({"sampler": sampler, "nfe": nfe, "frechet": fd, "ratio": fd / floor, "seconds": secs,
                     "images_per_sec": n / secs})
        if (sampler, nfe) == ("dpmpp_2m", 20):
            samples = x

    report = {
        "model": "diffusers.UNet2DModel", "diffusers_version": __import__("diffusers").__version__,
        "unet": UNET, "parameters": params, "args": vars(args), "n": n, "frechet_floor": floor,
        "scheduler": dict(noise_sched.config), "train_steps": step, "images_seen": step * bs,
        "train_seconds": train_seconds, "train_images_per_sec": train_ips,
        "train_images_per_sec_in_run": step * bs / train_seconds,
        "reached": {k: reached.get(str(k)) for k in THRESHOLDS}, "nfe": rows, "history": history,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "images-diffusers.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=list)
    plot_image_grid(samples, data, os.path.join(args.out, "images-diffusers-samples.png"),
                    f"diffusers UNet2DModel: DPM-Solver++(2M), 20 NFE, {step} steps")

    print(f"\n{step} steps x {bs} = {step * bs} images in {train_seconds:.1f} s of training "
          f"({report['train_images_per_sec_in_run']:.1f} images/s in the run; {train_ips:.1f} timed alone)")
    print(f"\n{'step':>5s} {'images':>8s} {'train s':>8s} {'Fréchet':>8s}")
    for h in history:
        print(f"{h['step']:5d} {h['images_seen']:8d} {h['train_seconds']:8.1f} {h['frechet']:8.3f}")
    for k in THRESHOLDS:
        r = reached.get(str(k))
        print(f"Fréchet <= {k:g} x floor ({k * floor:.3f}): " + (
            f"step {r['step']}, {r['images_seen']} images, {r['train_seconds']:.1f} s "
            f"(est. {r['est_seconds']:.1f} s at {train_ips:.1f} images/s)" if r else "not reached"))
    print(f"\n{'sampler':>8s} {'NFE':>4s} {'Fréchet':>8s} {'ratio':>6s} {'sample img/s':>13s}")
    for r in rows:
        print(f"{r['sampler']:>8s} {r['nfe']:4d} {r['frechet']:8.3f} {r['ratio']:6.2f} {r['images_per_sec']:13.1f}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
