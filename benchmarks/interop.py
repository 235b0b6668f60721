"""What a diffusers user gains by switching the sampler only (issue #23): one diffusers ``UNet2DModel`` trained with
DDPM on the 8x8 digits, sampled at 10 and 20 NFE by diffusers' own schedulers and by unidm's samplers on the same
weights, scored by the Fréchet distance against the held-out split next to its resampled floor.

    python benchmarks/interop.py [--max-minutes 3] [--n 1438] [--threads 1] [--unet small|baseline]
    python benchmarks/interop.py --model benchmarks/results/interop-model   # reuse a saved pipeline folder

1. **Train** (skipped with ``--model DIR``): DDPM exactly as ``benchmarks/images_diffusers.py`` (its
   ``train_step``: eps-prediction MSE at uniform timesteps of a ``DDPMScheduler(num_train_timesteps=1000,
   beta_schedule="linear")``, gradient clipping; AdamW at ``--lr`` with a linear warm-up, EMA of the weights with
   diffusers' ``EMAModel``, batch 128, epochs of shuffled training images), for ``--max-minutes`` of training time
   (or ``--steps`` optimizer steps). ``--unet baseline`` is that script's 4.0 M-parameter UNet; the default
   ``small`` is the same design scaled to the CPU budget (0.7 M parameters: two levels 8x8 / 4x4, one layer per
   block, attention at 4x4). The EMA weights are saved with the scheduler as a ``DDPMPipeline`` folder in
   safetensors (``--save``, default ``benchmarks/results/interop-model``).
2. **Import** the folder with ``unidm.interop.load_diffusers`` (the diffusers side loads the same folder with
   ``UNet2DModel.from_pretrained``).
3. **Sample** ``--n`` images per row (default: as many as training images, 1438) from the same initial noise: seed ``s`` gives ``z_s``
   (``unidm.samplers.prior_noise``); diffusers starts from ``z * init_noise_sigma``, unidm from ``z * sigma_0``.
   diffusers' schedulers are built with ``from_config`` on the pipeline's scheduler config, i.e. with the
   defaults a diffusers user gets (``clip_sample=True`` inherited by DDPM / DDIM, "leading" / "linspace"
   spacings). NFE are counted model calls; a step count is the largest whose cost fits the budget (Heun: 2 per
   step less one, so 9 and 19).
4. **Score**: the Fréchet distance of the clamped samples' features (unidm's digits feature network) to the whole
   held-out split, next to the *resampled floor* at the same ``n`` (``unidm.evaluation.image_metrics.
   resampled_floor``: fresh draws of ``n`` training images, the score of a model that learned its training split
   exactly; its std is the scale of the distance's own sampling noise) and the fixed floor (the whole training
   split). Every row uses the same ``n`` and seeds.

A check row also compares unidm's ``ddim`` on diffusers' "leading" timesteps with ``DDIMScheduler(clip_sample=
False)`` from the same ``x_T`` (max abs difference of the outputs). The table goes to stdout, the JSON to
``benchmarks/results/interop.json``. Default size: about 10 minutes on a shared CPU, one thread (3 minutes of
training; ``--max-minutes`` or ``--steps`` scale it up, ``--unet baseline`` trains the baseline's UNet).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings

import torch
from images_diffusers import (  # benchmarks/images_diffusers.py (this folder): the DDPM baseline
    UNET,
    ddpm_training,
    training_steps,
)

from unidm.data.images import digits_dataset
from unidm.evaluation.feature_net import feature_net_for, features
from unidm.evaluation.image_metrics import (
    frechet_distance,
    plot_image_grid,
    resampled_floor,
)
from unidm.likelihood import gamma_statistics
from unidm.samplers import CountingDenoiser, make_grid, prior_noise, solve

try:
    import diffusers
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
except ImportError:  # pragma: no cover
    sys.exit("benchmarks/interop.py needs Hugging Face diffusers: pip install -e \".[diffusers]\"")

from unidm.interop import load_diffusers, read_diffusers

#: the baseline's design at the CPU budget: two levels, one layer per block, attention at 4x4 (0.70 M parameters)
UNETS = {
    "small": {**UNET, "layers_per_block": 1, "block_out_channels": (32, 64),
              "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D")},
    "baseline": UNET,
}
BUDGETS = (10, 20)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: diffusers rows: name -> (scheduler class, extra config, NFE of n steps)
one = lambda n: n
two = lambda n: 2 * n - 1
DIFFUSERS = {
    "DDPMScheduler": ("DDPMScheduler", {}, one),
    "DDIMScheduler": ("DDIMScheduler", {}, one),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}, one),
    "DPMSolverMultistep karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, one),
    "UniPCMultistep": ("UniPCMultistepScheduler", {}, one),
    "DEISMultistep": ("DEISMultistepScheduler", {}, one),
    "EulerDiscrete": ("EulerDiscreteScheduler", {}, one),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}, two),
}
#: unidm rows: name -> (sampler, grid, options, NFE of n steps on a grid ending at 0)
UNIDM = {
    "ddim @ddpm-leading": ("ddim", "ddpm-leading", {}, one),  # DDIMScheduler's timesteps, without its clipping
    "dpmpp_2m @ddpm-leading": ("dpmpp_2m", "ddpm-leading", {}, one),  # DDIM's 900..0 (multistep: 900..90, 0)
    "dpmpp_2m @karras": ("dpmpp_2m", "karras", {}, one),
    "dpmpp_2m @log-snr": ("dpmpp_2m", "log-snr", {}, one),
    "unipc order=2 @ddpm-leading": ("unipc", "ddpm-leading", {"order": 2}, one),  # UniPCMultistep's order
    "unipc @karras": ("unipc", "karras", {}, one),
    "dpmpp_3m @karras": ("dpmpp_3m", "karras", {}, one),
    "ipndm @ddpm-leading": ("ipndm", "ddpm-leading", {}, one),
    "heun @karras": ("heun", "karras", {}, two),
    "ddpm @ddpm-trailing": ("ddpm", "ddpm-trailing", {}, one),
    "ddpm analytic @ddpm-trailing": ("ddpm", "ddpm-trailing", {"variance": "analytic"}, one),
}


def steps_for(nfe_of, budget: int) -> int:
    return max(n for n in range(1, budget + 1) if nfe_of(n) <= budget)


# ------------------------------------------------------------------------------------------------------ training
def train_model(data, args) -> tuple[UNet2DModel, DDPMScheduler, dict]:
    """DDPM on ``data.train`` with ``images_diffusers.train_step``, as that script's loop; returns the EMA UNet."""
    torch.manual_seed(args.seed)
    model = UNet2DModel(**UNETS[args.unet])
    noise_sched, opt, lr_sched, ema = ddpm_training(model, args.lr, args.warmup, args.ema_decay)
    bs = args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    step, seconds, losses = 0, 0.0, []
    params = sum(q.numel() for q in model.parameters())
    budget = f"{args.steps} steps" if args.steps else f"{args.max_minutes:g} minutes"
    print(f"training diffusers UNet2DModel ({args.unet}, {params / 1e6:.3f} M parameters) with DDPM for {budget}",
          flush=True)
    for step, seconds, loss in training_steps(model, noise_sched, opt, lr_sched, ema, data.train, bs, g):
        losses.append(loss)
        if step % 100 == 0:
            print(f"  step {step:5d}  {seconds:6.1f} s  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
        if (step >= args.steps) if args.steps else (seconds >= 60 * args.max_minutes):
            break
    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model.parameters())
    info = {"unet": args.unet, "parameters": params, "steps": step, "batch_size": bs, "images_seen": step * bs,
            "train_seconds": seconds, "images_per_sec": step * bs / max(seconds, 1e-9),
            "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "lr": args.lr, "warmup": args.warmup,
            "ema_decay": args.ema_decay}
    return ema_model.eval(), noise_sched, info


# ------------------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def diffusers_draw(unet: UNet2DModel, sched_config: dict, cls_name: str, extra: dict, steps: int, z: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, int]:
    """diffusers' own loop (as its pipelines): ``scale_model_input``, the UNet, ``step``; returns samples and NFE."""
    sched = getattr(diffusers, cls_name).from_config(sched_config, **extra)
    sched.set_timesteps(steps)
    x = z * sched.init_noise_sigma
    gen = torch.Generator().manual_seed(seed)
    nfe = 0
    for t in sched.timesteps:
        eps = unet(sched.scale_model_input(x, t), t).sample
        nfe += 1
        kw = {"generator": gen} if "generator" in sched.step.__code__.co_varnames else {}
        x = sched.step(eps, t, x, **kw).prev_sample
    return x, nfe


@torch.no_grad()
def unidm_draw(model, sampler: str, grid: str, steps: int, seeds, options: dict) -> tuple[torch.Tensor, int]:
    """unidm's ``generate`` (the path of ``unidm sample``) through a counting wrapper; returns samples and NFE."""
    counting = CountingDenoiser(model.denoiser)
    x = model.generate(len(seeds), seeds=seeds, sampler=sampler, steps=steps, grid=grid, denoiser=counting,
                       **options)
    return x, counting.nfe


@torch.no_grad()
def ddim_check(model, unet, sched_config: dict, steps: int = 10, n: int = 16) -> float:
    """max |unidm ddim on diffusers' leading timesteps - DDIMScheduler(clip_sample=False)| from the same x_T."""
    z = torch.randn(n, *model.data_shape, generator=torch.Generator().manual_seed(123))
    ref, _ = diffusers_draw(unet, sched_config, "DDIMScheduler", {"clip_sample": False}, steps, z, 0)
    g = make_grid("ddpm-leading", steps, model.process)
    x = z * math.sqrt(1 + float(g[0]) ** 2)  # diffusers' x_T in unidm's sigma-space
    return float((solve(model.denoiser, x, g, method="ddim").x - ref).abs().max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a saved DDPMPipeline folder to reuse (skips training)")
    p.add_argument("--save", default=os.path.join(RESULTS, "interop-model"),
                   help="where the trained pipeline folder is written (replaced if it exists)")
    p.add_argument("--unet", choices=sorted(UNETS), default="small",
                   help="small (0.70 M, the default) or baseline (images_diffusers.py's 4.0 M UNet)")
    p.add_argument("--max-minutes", type=float, default=3.0, help="training time budget (scale it up for quality)")
    p.add_argument("--steps", type=int, default=0, help="train this many optimizer steps instead of a time budget")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--n", type=int, default=0, help="samples per row (default 0: as many as training images, 1438)")
    p.add_argument("--gamma-n", type=int, default=500,
                   help="training images for the analytic variance's Gamma statistics (at the grid's levels only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 by default: on a shared CPU 2 threads ran 5-10x slower than 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    t_start = time.perf_counter()

    data = digits_dataset()
    net = feature_net_for(data, verbose=True)
    f_test, f_train = features(net, data.test), features(net, data.train)
    floor = frechet_distance(f_train, f_test)
    n = min(args.n or len(data.train), len(data.train))
    resampled = resampled_floor(f_train, f_test, n)
    print(f"Fréchet floor {floor:.3f} (whole training split); resampled floor at n={n}: {resampled['mean']:.3f} "
          f"+- {resampled['std']:.3f}", flush=True)

    if args.model:
        folder, train_info = args.model, {"reused": os.path.abspath(args.model)}
        print(f"reusing {folder}", flush=True)
    else:
        unet, noise_sched, train_info = train_model(data, args)
        folder = args.save
        if os.path.isdir(folder):
            import shutil
            shutil.rmtree(folder)
        DDPMPipeline(unet=unet, scheduler=noise_sched).save_pretrained(folder, safe_serialization=True)
        print(f"saved the EMA weights as a DDPMPipeline folder: {folder}", flush=True)

    run = load_diffusers(folder)  # unidm's side
    notes = read_diffusers(folder).notes  # what the import does not carry over (printed by unidm import-diffusers)
    for note in notes:
        print(f"import note: {note}", flush=True)
    model = run.model
    unet = UNet2DModel.from_pretrained(os.path.join(folder, "unet"), low_cpu_mem_usage=False).eval()  # diffusers' side: the same folder
    sched_config = dict(DDPMScheduler.from_pretrained(os.path.join(folder, "scheduler")).config)
    check = ddim_check(model, unet, sched_config)
    print(f"check: unidm ddim @ddpm-leading vs DDIMScheduler(clip_sample=False), 10 steps, 16 samples: max abs "
          f"difference {check:.2e}", flush=True)

    seeds = list(range(args.seed, args.seed + n))
    z = prior_noise((n, *model.data_shape), 1.0, seeds=seeds)

    # Analytic-DPM's Gamma at the levels of the analytic rows' grids only (cheap: a few dozen levels)
    gamma_levels = set()
    for sampler, grid, opts, nfe_of in UNIDM.values():
        if opts.get("variance") == "analytic":
            for b in BUDGETS:
                gamma_levels |= {float(s) for s in make_grid(grid, steps_for(nfe_of, b), model.process) if s > 0}
    gamma, gamma_seconds = None, 0.0
    if gamma_levels:
        t0 = time.perf_counter()
        x0 = data.train[:args.gamma_n].float()
        with model.evaluating():
            gamma = gamma_statistics(model.denoiser, x0, sorted(gamma_levels), batch_size=500, progress=False,
                                     generator=torch.Generator().manual_seed(args.seed))
        gamma_seconds = time.perf_counter() - t0
        print(f"Gamma statistics at {len(gamma_levels)} levels over {len(x0)} training images: {gamma_seconds:.1f} s",
              flush=True)

    rows: list[dict] = []
    pictures = {}

    def score(x: torch.Tensor) -> float:
        return frechet_distance(features(net, x.clamp(-1, 1)), f_test)

    def add(library: str, name: str, what: dict, draw) -> None:
        row = {"library": library, "name": name, **what, "runs": []}
        for b in BUDGETS:
            t0 = time.perf_counter()
            x, nfe, steps = draw(b)
            secs = time.perf_counter() - t0
            fd = score(x)
            row["runs"].append({"budget": b, "steps": steps, "nfe": nfe, "frechet": fd,
                                "ratio_resampled": fd / resampled["mean"], "seconds": secs})
            pictures[(name, b)] = x
        rows.append(row)
        r = row["runs"]
        print(f"  {library:9s} {name:30s} " + "  ".join(f"NFE {q['nfe']:2d}: {q['frechet']:7.3f}" for q in r)
              + f"   ({sum(q['seconds'] for q in r):.0f} s)", flush=True)

    for name, (cls_name, extra, nfe_of) in DIFFUSERS.items():
        def draw(b, cls_name=cls_name, extra=extra, nfe_of=nfe_of):
            steps = steps_for(nfe_of, b)
            x, nfe = diffusers_draw(unet, sched_config, cls_name, extra, steps, z, args.seed)
            return x, nfe, steps
        add("diffusers", name, {"scheduler": cls_name, "config": extra}, draw)

    for name, (sampler, grid, opts, nfe_of) in UNIDM.items():
        def draw(b, sampler=sampler, grid=grid, opts=opts, nfe_of=nfe_of):
            steps = steps_for(nfe_of, b)
            o = {**opts, "gamma": gamma} if opts.get("variance") == "analytic" else opts
            x, nfe = unidm_draw(model, sampler, grid, steps, seeds, o)
            return x, nfe, steps
        add("unidm", name, {"sampler": sampler, "grid": grid, "options": opts}, draw)

    best = {b: min(rows, key=lambda r, i=i: r["runs"][i]["frechet"]) for i, b in enumerate(BUDGETS)}
    total = time.perf_counter() - t_start
    report = {
        "diffusers_version": diffusers.__version__, "model_folder": os.path.abspath(folder), "train": train_info,
        "unet_config": dict(unet.config), "scheduler_config": sched_config, "n": n, "seeds": [seeds[0], seeds[-1]],
        "frechet_floor": floor, "frechet_floor_resampled": resampled, "threads": args.threads,
        "ddim_check_max_abs_diff": check, "gamma": {"levels": len(gamma_levels), "n": args.gamma_n,
                                                    "seconds": gamma_seconds},
        "import_notes": notes, "rows": rows, "total_seconds": total, "args": vars(args),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "interop.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=list)
    b_name = best[BUDGETS[0]]["name"]
    plot_image_grid(pictures[(b_name, BUDGETS[0])], data, os.path.join(args.out, "interop-samples.png"),
                    f"imported diffusers UNet2DModel: {b_name}, {BUDGETS[0]} NFE")

    tr = train_info
    trained = (f"trained {tr['steps']} steps x {tr['batch_size']} = {tr['images_seen']} images in "
               f"{tr['train_seconds']:.0f} s ({tr['unet']} UNet, {tr['parameters'] / 1e6:.2f} M parameters)"
               if "steps" in tr else f"reused {tr['reused']}")
    print(f"\n{trained}; n = {n} samples per row, seeds {seeds[0]}..{seeds[-1]}; {args.threads} threads; "
          f"{total:.0f} s in all")
    print(f"Fréchet distance to the held-out split (resampled floor {resampled['mean']:.3f} +- {resampled['std']:.3f}"
          f" at n = {n}; fixed floor {floor:.3f}); x: ratio to the resampled floor")
    head = "  ".join(f"{'NFE':>3s} {'Fréchet':>8s} {'x':>5s}" for _ in BUDGETS)
    print(f"{'library':9s} {'sampler':30s}  {head}")
    for r in rows:
        cells = "  ".join(f"{q['nfe']:3d} {q['frechet']:8.3f} {q['ratio_resampled']:5.2f}" for q in r["runs"])
        print(f"{r['library']:9s} {r['name']:30s}  {cells}")
    for b in BUDGETS:
        i = BUDGETS.index(b)
        bd = min((r for r in rows if r["library"] == "diffusers"), key=lambda r: r["runs"][i]["frechet"])
        bu = min((r for r in rows if r["library"] == "unidm"), key=lambda r: r["runs"][i]["frechet"])
        print(f"best at {b} NFE: diffusers {bd['name']} {bd['runs'][i]['frechet']:.3f}, unidm {bu['name']} "
              f"{bu['runs'][i]['frechet']:.3f}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
