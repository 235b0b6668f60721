"""The reverse variance benchmark: DDPM's fixed variances, Analytic-DPM (with and without the ELBO-optimal
trajectory) and Extended-Analytic-DPM's learned NPR / SN heads, at K steps, on the same mean model.

    python benchmarks/variance.py [--threads 2] [--n 1000] [--steps 10,25,50,100,1000] [--gamma-n 500]
                                  [--teacher-steps 2000] [--head-steps 1000] [--digits] [--name NAME]

For the 2-D mixture ``gmm-ring`` (6 components, std 0.15, on a circle of radius 1.5) on DDPM's ``vp-discrete``
process (T = 1000, linear betas 1e-4 to 0.02) two mean models: the exact denoiser (the mixture oracle) and a trained
eps-model (the ``gmm-ring-vp`` preset on ``vp-discrete`` with ``discrete-t`` noise levels). For each: the Gamma
statistics over ``--gamma-n`` training points (``mse`` estimator) at all 1000 levels and an NPR and an SN head (``gmm-ring-vp-npr`` /
``-sn`` presets) trained on it. Then at every K: the K-step ELBO in bits/dim on ``--n`` held-out points (the
continuous decoder; the same noise draws for every variance, so the columns are paired) and the cross-entropy gap
``-E_samples log p(x) - H(p)`` (nats; the project's mixture metric) of ``--n`` samples drawn by the ``ddpm`` step on the
even (``ddpm-linspace``) grid, or on the DP grid for ``analytic + dp``; ``ddim`` (eta = 0, plain) beside them (no
ELBO: its forward process is deterministic). ``--digits`` adds ``digits-vp`` (unconditional, ``vp-discrete``,
1000 steps) with the Fréchet distance in the digits classifier's features and the C2ST accuracy (0.5 is
indistinguishable) of as many samples as training images, and the ELBO of the held-out images (17 grey levels, the
discretized decoder).

The table goes to stdout and the JSON to ``benchmarks/results/variance-<name>.json``. Reference for the size of the
effect (quoted from memory of Bao et al. 2022a, Table 1, CIFAR-10 with the linear schedule, NLL in bits/dim, even
trajectory; verify against the paper before citing): at K = 10 / 25 / 50 / 100 / 1000, DDPM beta 6.99 / 6.11 / 5.44
/ 4.86 / 3.75, beta-tilde 74.95 / 24.98 / 12.01 / 7.08 / 3.73 (approximately), Analytic-DPM 5.47 / 4.79 / 4.38 /
4.07 / 3.59; with the DP trajectory Analytic-DPM reaches about 4.11 at K = 10. Bao et al. 2022b report NPR-DPM a few
hundredths of a bit/dim below Analytic-DPM at every K, and SN-DPM the best FID at few steps but a worse bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

from unidm.config import apply_overrides
from unidm.likelihood import gamma_statistics, kstep_elbo, statistics_sigmas
from unidm.methods.base import DenoisingModel
from unidm.methods.variance_heads import VarianceHead
from unidm.presets import get_preset
from unidm.processes import VPDiscrete
from unidm.run import build_data, build_model
from unidm.samplers import make_grid, sample
from unidm.samplers.variance import dp_grid
from unidm.train import train

ISOTROPIC = [("beta", "beta", "even"), ("beta-tilde", "beta-tilde", "even"), ("analytic", "analytic", "even"),
             ("analytic + dp", "analytic", "dp")]
COLUMNS = [name for name, _, _ in ISOTROPIC] + ["npr", "sn", "ddim (eta=0)"]


class OracleTeacher(DenoisingModel):
    """An exact denoiser behind the Gaussian face (the frozen mean of a head)."""

    family = "oracle"
    sampler_seed_offset = 1_000_003  # the Gaussian family's stream: the same seeds as the heads' draws

    def __init__(self, oracle, process, data_shape):
        super().__init__(data_shape)
        self.denoiser = oracle
        self.process = process


def _train(model, cfg, threads: int) -> float:
    """Train ``model`` in a temporary run folder; the training seconds."""
    cfg.train.num_threads, cfg.train.progress, cfg.train.log_every = threads, False, 10**9
    with tempfile.TemporaryDirectory() as tmp:
        res = train(model, build_data(cfg), cfg.train, os.path.join(tmp, "run"), log=lambda _: None)
    model.eval()
    return float(res.wall_time)


def _heads(teacher, preset: str, data, steps: int, threads: int) -> tuple[dict, dict]:
    heads, seconds = {}, {}
    for kind in ("npr", "sn"):
        cfg = apply_overrides(get_preset(f"{preset}-{kind}"), [f"train.steps={steps}"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            head = VarianceHead.from_config(cfg.model, cfg.method, data, frozen={"teacher": teacher})
        seconds[kind] = _train(head, cfg, threads)
        heads[kind] = head
    return heads, seconds


def _samples(teacher, heads, stats, column: str, steps: int, n: int, dtype) -> torch.Tensor:
    process, seeds = teacher.process, range(n)
    if column == "npr" or column == "sn":
        return heads[column].generate(n, seeds=seeds, sampler="ddpm", steps=steps, grid="ddpm-linspace")
    grid = make_grid("ddpm-linspace", steps, process)
    opts: dict = {}
    method = "ddpm"
    if column == "ddim (eta=0)":
        method = "ddim"
    elif column == "analytic + dp":
        grid, opts = dp_grid(stats, steps), {"variance": "analytic", "gamma": stats}
    else:
        opts = {"variance": column, "gamma": stats if column == "analytic" else None}
    x = process.prior_sample((n, *teacher.data_shape), float(grid[0]), seeds=seeds, dtype=dtype)
    gens = teacher.sample_generators(seeds) if hasattr(teacher, "sample_generators") else None
    return sample(teacher.denoiser, x, grid, method, generator=gens, **opts)


def _elbo(teacher, heads, stats, column: str, x: torch.Tensor, steps: int, levels: int | None) -> float | None:
    g = torch.Generator().manual_seed(1)
    if column in ("npr", "sn"):
        return float(heads[column].likelihood(x, method="elbo", steps=steps, num_levels=levels,
                                              generator=g).bits_per_dim.mean())
    if column == "ddim (eta=0)":
        return None
    _, variance, trajectory = next(c for c in ISOTROPIC if c[0] == column)
    res = kstep_elbo(teacher.denoiser, x, teacher.process, steps=steps, trajectory=trajectory, variance=variance,
                     gamma=stats, num_levels=levels, generator=g)
    return float(res.bits_per_dim.mean())


def evaluate(label: str, teacher, heads, stats, x_test, ks, n, quality, levels, dtype) -> list[dict]:
    rows = []
    for k in ks:
        for column in COLUMNS:
            t0 = time.perf_counter()
            with torch.no_grad():
                bpd = _elbo(teacher, heads, stats, column, x_test, k, levels)
                metrics = quality(_samples(teacher, heads, stats, column, k, n, dtype))
            rows.append({"mean": label, "K": k, "variance": column, "bits_per_dim": bpd, **metrics,
                         "seconds": time.perf_counter() - t0})
            print(f"  {label:8s} K={k:5d} {column:14s} bpd {'-' if bpd is None else f'{bpd:8.3f}'}  "
                  + "  ".join(f"{key} {val:.4f}" for key, val in metrics.items()), flush=True)
    return rows


def table(rows: list[dict], metric: str, title: str) -> str:
    means = list(dict.fromkeys(r["mean"] for r in rows))
    ks = list(dict.fromkeys(r["K"] for r in rows))
    out = [f"\n{title}", "| mean | K | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for m in means:
        for k in ks:
            cells = []
            for c in COLUMNS:
                v = next(r.get(metric) for r in rows if r["mean"] == m and r["K"] == k and r["variance"] == c)
                cells.append("-" if v is None else f"{v:.3f}")
            out.append(f"| {m} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def mixture(args) -> tuple[list[dict], dict]:
    cfg = apply_overrides(get_preset("gmm-ring-vp"), ["method.process=vp-discrete", "method.noise_levels=discrete-t",
                                                      f"train.steps={args.teacher_steps}"])
    data = build_data(cfg)
    oracle = data.meta["oracle"]
    entropy = oracle.entropy()
    x_test = data.test[: args.n].double()
    x_gamma = data.train[: args.gamma_n]

    def quality(samples):
        return {"ce_gap": float(-oracle.log_prob(samples.double()).mean()) - entropy}

    rows, info = [], {"entropy": entropy}
    trained = build_model(cfg, data)
    t_train = _train(trained, cfg, args.threads)
    process = trained.process
    exact = OracleTeacher(oracle, process, data.shape).double()
    for label, teacher, dtype, t_teacher in (("exact", exact, torch.float64, None),
                                             ("trained", trained, torch.float32, t_train)):
        t0 = time.perf_counter()
        stats = gamma_statistics(teacher.denoiser, x_gamma.to(dtype), statistics_sigmas(process),
                                 generator=torch.Generator().manual_seed(0), progress=False)
        t_gamma = time.perf_counter() - t0
        heads, t_heads = _heads(teacher, "gmm-ring-vp", data, args.head_steps, args.threads)
        if dtype == torch.float64:
            heads = {k: h.double() for k, h in heads.items()}
        info[label] = {"teacher_train_s": t_teacher, "gamma_s": t_gamma, "head_train_s": t_heads,
                       "gamma_fraction_of_teacher_training": None if t_teacher is None else t_gamma / t_teacher}
        print(f"{label}: Gamma over {len(x_gamma)} points x {len(stats.sigmas)} levels in {t_gamma:.1f} s"
              + ("" if t_teacher is None else f" ({100 * t_gamma / t_teacher:.1f}% of the teacher's "
                 f"{t_teacher:.0f} s of training)") + f"; heads trained in "
              + ", ".join(f"{k} {v:.0f} s" for k, v in t_heads.items()), flush=True)
        x = x_test if dtype == torch.float64 else x_test.float()
        rows += evaluate(label, teacher, heads, stats, x, args.steps, args.n, quality, None, dtype)
    return rows, info


def digits(args) -> tuple[list[dict], dict]:
    from unidm.evaluation.feature_net import feature_net_for, features
    from unidm.evaluation.image_metrics import c2st, frechet_distance

    cfg = apply_overrides(get_preset("digits-vp"), ["method.process=vp-discrete", "method.noise_levels=discrete-t",
                                                    "method.conditional=false",
                                                    f"train.steps={args.digits_teacher_steps}"])
    data = build_data(cfg)
    net = feature_net_for(data, verbose=False)
    f_test = features(net, data.test)
    n = len(data.train)

    def quality(samples):
        samples = samples.clamp(-1, 1)
        return {"fd": frechet_distance(features(net, samples), f_test), "c2st": c2st(samples, data.test)}

    teacher = build_model(cfg, data)
    t_train = _train(teacher, cfg, args.threads)
    t0 = time.perf_counter()
    stats = gamma_statistics(teacher.denoiser, data.train[: args.digits_gamma_n],
                             statistics_sigmas(teacher.process),
                             generator=torch.Generator().manual_seed(0), progress=False)
    t_gamma = time.perf_counter() - t0
    heads, t_heads = _heads(teacher, "digits-vp", data, args.digits_head_steps, args.threads)
    info = {"teacher_train_s": t_train, "gamma_s": t_gamma, "head_train_s": t_heads,
            "gamma_fraction_of_teacher_training": t_gamma / t_train,
            "frechet_floor": frechet_distance(features(net, data.train), f_test)}
    print(f"digits: Gamma in {t_gamma:.1f} s ({100 * t_gamma / t_train:.1f}% of {t_train:.0f} s of training)",
          flush=True)
    rows = evaluate("digits", teacher, heads, stats, data.test, args.digits_steps, n, quality,
                    data.meta.get("levels"), torch.float32)
    return rows, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=1000, help="held-out points for the ELBO and samples per cell")
    p.add_argument("--steps", default="10,25,50,100,1000", help="the K to report")
    p.add_argument("--gamma-n", type=int, default=500, help="training points for the Gamma statistics")
    p.add_argument("--teacher-steps", type=int, default=2000)
    p.add_argument("--head-steps", type=int, default=1000)
    p.add_argument("--digits", action="store_true", help="add digits-vp (vp-discrete, unconditional): ~30+ min")
    p.add_argument("--digits-teacher-steps", type=int, default=3000)
    p.add_argument("--digits-head-steps", type=int, default=1500)
    p.add_argument("--digits-steps", default="10,25,50,100")
    p.add_argument("--digits-gamma-n", type=int, default=256, help="training images for digits' Gamma statistics")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--name", default="default")
    args = p.parse_args(argv)
    args.steps = [int(k) for k in args.steps.split(",")]
    args.digits_steps = [int(k) for k in args.digits_steps.split(",")]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, info = mixture(args)
    result = {"args": {k: v for k, v in vars(args).items()}, "mixture": {"rows": rows, "info": info}}
    print(table(rows, "bits_per_dim", "gmm-ring: K-step ELBO, bits/dim (true NLL: "
                f"{info['entropy'] / (2 * math.log(2)):.3f})"))
    print(table(rows, "ce_gap", "gmm-ring: cross-entropy gap of the samples, nats (0 is the true density)"))
    if args.digits:
        drows, dinfo = digits(args)
        result["digits"] = {"rows": drows, "info": dinfo}
        print(table(drows, "bits_per_dim", "digits-vp: K-step ELBO, bits/dim (17 grey levels)"))
        print(table(drows, "fd", f"digits-vp: Fréchet distance (floor {dinfo['frechet_floor']:.3f})"))
        print(table(drows, "c2st", "digits-vp: C2ST accuracy (0.5: indistinguishable)"))
    result["seconds"] = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"variance-{args.name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{result['seconds']:.0f} s; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
