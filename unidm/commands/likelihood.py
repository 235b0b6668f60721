"""``unidm likelihood DIR [--split test] [--exact | --hutchinson K] [--elbo]``: held-out log-likelihood of a run.

Gaussian diffusion / flow models go through the probability-flow ODE (:func:`unidm.evaluation.likelihood.
log_likelihood`); with ``--elbo`` a DDPM-type model on the ``vp-discrete`` process also reports its discrete-time
variational bound (:func:`unidm.evaluation.elbo.elbo`). Models with their own exact ``log_prob`` (normalizing flows,
autoregressive models) are evaluated directly, in the same units. For quantized data (``data.meta["levels"]``, or
``--levels K``) the numbers are bits/dim of the *discrete* data, through uniform dequantization.

The lead wires this into ``unidm/cli.py`` as::

    sp = sub.add_parser("likelihood", help="held-out NLL and bits/dim")
    likelihood.add_arguments(sp); sp.set_defaults(fn=likelihood.run)
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import Tensor

__all__ = ["add_arguments", "run", "evaluate"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (config.json + model.safetensors)")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    div = parser.add_mutually_exclusive_group()
    div.add_argument("--exact", action="store_true", help="exact divergence through autograd (default)")
    div.add_argument("--hutchinson", type=int, metavar="K", help="Hutchinson's estimator with K probes")
    parser.add_argument("--probe", choices=["rademacher", "gaussian"], default="rademacher")
    parser.add_argument("-n", type=int, default=2000, help="at most this many examples of the split")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--sigma-min", type=float, help="data end of the ODE (default: the process's sigma_min)")
    parser.add_argument("--sigma-max", type=float, help="prior end (default: the process's sigma_max)")
    parser.add_argument("--levels", type=int, help="quantization levels of the data (default: data.meta)")
    parser.add_argument("--elbo", action="store_true", help="also DDPM's ELBO (vp-discrete process only)")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of the ODE state (the network keeps its own)")
    parser.add_argument("--seed", type=int, default=0, help="dequantization noise and probes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _summary(values: Tensor) -> dict:
    v = values.double()
    return {"mean": float(v.mean()), "stderr": float(v.std() / math.sqrt(max(len(v), 1)))}


def evaluate(model, x: Tensor, args: argparse.Namespace, levels: int | None) -> dict:
    """NLL (nats) and bits/dim of ``x`` under ``model``, batch by batch; returns a JSON-able report."""
    from ..evaluation.elbo import elbo
    from ..evaluation.likelihood import latent_outliers, log_likelihood
    from ..processes import VPDiscrete

    g = torch.Generator(device=x.device).manual_seed(args.seed)
    report: dict = {"n": len(x), "dim": int(x[0].numel()), "levels": levels}
    logp, bpd, nfe, elbo_bpd, outliers = [], [], [], [], []
    denoiser = getattr(model, "denoiser", None)
    for start in range(0, len(x), args.batch_size):
        xb = x[start:start + args.batch_size]
        if denoiser is None:  # a density model with an exact log_prob
            lp = model.log_prob(xb).double()
            logp.append(lp)
            bpd.append(-lp / (xb[0].numel() * math.log(2)))
            continue
        res = log_likelihood(denoiser, xb, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                             hutchinson=args.hutchinson, probe=args.probe, num_levels=levels,
                             rtol=args.rtol, atol=args.atol, generator=g)
        logp.append(res.log_prob)
        bpd.append(res.bits_per_dim)
        nfe.append(res.nfe)
        outliers.append(latent_outliers(res.latent_scale, int(xb[0].numel())))
        report.update(sigma_min=res.sigma_min, sigma_max=res.sigma_max, prior_variance=res.prior_variance)
        if args.elbo and isinstance(getattr(model, "process", None), VPDiscrete):
            elbo_bpd.append(elbo(denoiser, xb, num_levels=levels, generator=g).bits_per_dim)
    report["nll_nats"] = _summary(-torch.cat(logp))
    report["bits_per_dim"] = _summary(torch.cat(bpd))
    report["method"] = ("model.log_prob" if denoiser is None else
                        f"ode-{'exact' if args.hutchinson is None else f'hutchinson{args.hutchinson}'}")
    if nfe:
        report["nfe_mean"] = sum(nfe) / len(nfe)
        report["bits_per_dim_median"] = float(torch.cat(bpd).median())
        report["latent_outliers"] = int(torch.cat(outliers).sum())
    if elbo_bpd:
        report["elbo_bits_per_dim"] = _summary(torch.cat(elbo_bpd))
    return report


def run(args: argparse.Namespace) -> int:
    from ..run import load_run

    t0 = time.perf_counter()
    loaded = load_run(args.run, device=args.device, weights=args.weights)
    dtype = getattr(torch, args.dtype)
    model = loaded.model.eval()
    data = loaded.data.test if args.split == "test" else loaded.data.train
    x = data[: args.n].to(device=args.device, dtype=dtype)
    levels = args.levels if args.levels is not None else loaded.data.meta.get("levels")
    with torch.no_grad():
        report = evaluate(model, x, args, levels)
    oracle = loaded.data.meta.get("oracle")
    if oracle is not None and levels is None:  # analytic data: the floor is the true density on the same points
        true_nll = -oracle.log_prob(x.double().cpu())
        report["true_nll_nats"] = _summary(true_nll)
        report["entropy_nats"] = oracle.entropy()
    report.update(run=args.run, split=args.split, step=loaded.step, seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print(report)
    return 0


def _print(r: dict) -> None:
    unit = "bits/dim on the discrete data" if r.get("levels") else "bits/dim"
    print(f"{r['run']} (step {r['step']}), {r['split']} split, {r['n']} examples, dim {r['dim']}, {r['method']}"
          + (f", mean NFE {r['nfe_mean']:.0f}" if "nfe_mean" in r else ""))
    print(f"  NLL       {r['nll_nats']['mean']:10.4f} +- {r['nll_nats']['stderr']:.4f} nats")
    print(f"  {unit:s}: {r['bits_per_dim']['mean']:.4f} +- {r['bits_per_dim']['stderr']:.4f}")
    if r.get("latent_outliers"):
        print(f"  WARNING: {r['latent_outliers']} runaway latents (far outside the prior) dominate the mean; median "
              f"{r['bits_per_dim_median']:.4f} bits/dim; try a lower --sigma-max (docs/likelihood.md)")
    if "elbo_bits_per_dim" in r:
        print(f"  ELBO bound: {r['elbo_bits_per_dim']['mean']:.4f} +- {r['elbo_bits_per_dim']['stderr']:.4f} bits/dim")
    if "true_nll_nats" in r:
        print(f"  true density on the same points: {r['true_nll_nats']['mean']:.4f} nats (entropy "
              f"{r['entropy_nats']:.4f}); gap {r['nll_nats']['mean'] - r['true_nll_nats']['mean']:+.4f}")
    print(f"  ({r['seconds']:.1f} s)")
