"""Likelihood benchmark: held-out NLL of trained models next to the floor, and digits bits/dim (ODE and ELBO).

    python benchmarks/likelihood.py [--steps 1500] [--digits-steps 2000] [--n 300] [--rtol 1e-4] [--skip-mixtures]

- 2-D analytic mixtures (``gmm-ring``, ``gmm-grid``; EDM preset with a smaller MLP): the NLL (nats) of held-out
  points through the probability-flow ODE with the exact divergence, next to the true density's NLL on the same
  points and its entropy (the floor no model can beat on average), and the same ODE run with the exact oracle
  denoiser (which must land on the floor: the method's own error).
- digits (the library's ``digits`` dataset, 8x8, 17 grey levels in [-1, 1]): the ``digits-vp`` preset (UNet) made a
  DDPM model (``vp-discrete``, T = 1000, discrete training times), one model per parameterization (eps and v).
  For each model: bits/dim of the dequantized held-out digits from the ODE (Hutchinson, one Rademacher probe) at
  the process's sigma_max and at ``--sigma-max-short``, with the median and the count of runaway latents
  (docs/likelihood.md), next to DDPM's ELBO of the same model (discretized decoder, variance beta). The ELBO exists
  only for discrete VP models. A uniform model is log2(17) = 4.09 bits/dim.

Models are trained with the library's own trainer (``unidm.train.train``) into a temporary run folder and loaded
back with ``unidm.run.load_run``. Prints a table and writes ``benchmarks/results/likelihood.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings

import torch

from unidm.config import RunConfig, TrainConfig
from unidm.data import Dataset, build_dataset
from unidm.likelihood import elbo, latent_outliers, log_likelihood
from unidm.methods.gaussian import GaussianDiffusion
from unidm.nn import build_network
from unidm.train import train

LN2 = math.log(2)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def _train(model, data: Dataset, steps: int, batch_size: int, seed: int, folder: str):
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, warmup=100, ema_decay=0.995, ckpt_every=steps,
                      log_every=max(steps // 5, 1), seed=seed, device="cpu", num_threads=1, progress=False)
    t0 = time.perf_counter()
    result = train(model, data, cfg, folder, config_dict=RunConfig(train=cfg).to_dict(), log=lambda s: None)
    return result, time.perf_counter() - t0


def _ema_denoiser(model: GaussianDiffusion, folder: str):
    """The EMA weights of the run folder, loaded back from its safetensors file."""
    from unidm.train import load_safetensors

    tensors = load_safetensors(os.path.join(folder, "model.safetensors"))
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=False)
    return model.eval().denoiser


def bench_mixture(name: str, args) -> dict:
    data = build_dataset(name, n_train=20_000, n_test=2_000, seed=0)
    oracle = data.meta["oracle"]
    net = build_network("mlp", {"dim": 2}, hidden=128, depth=3, embedding="fourier")
    model = GaussianDiffusion(net, "edm", "edm", "lognormal", "edm", sigma_data=round(data.std, 4),
                              noise_options={"p_mean": -1.0, "p_std": 1.4})
    model.data_shape = (2,)
    with tempfile.TemporaryDirectory() as folder:
        result, seconds = _train(model, data, args.steps, 256, 0, folder)
        denoiser = _ema_denoiser(model, folder)
    x = data.test[: args.n].double()
    kw = dict(rtol=args.rtol, atol=args.rtol)
    t0 = time.perf_counter()
    with torch.no_grad():
        trained = log_likelihood(denoiser, x, **kw)
    t_ode = time.perf_counter() - t0
    exact = log_likelihood(oracle, x, sigma_min=trained.sigma_min, sigma_max=trained.sigma_max,
                           prior_variance=trained.prior_variance, **kw)
    true_nll = -oracle.log_prob(x)
    return {
        "data": name, "train_steps": result.step, "train_seconds": seconds, "n": len(x),
        "nll_trained": _mean_se(-trained.log_prob), "nfe_trained": trained.nfe, "ode_seconds": t_ode,
        "nll_oracle_ode": _mean_se(-exact.log_prob), "nfe_oracle": exact.nfe,
        "nll_true": _mean_se(true_nll), "entropy": oracle.entropy(),
        "oracle_ode_max_abs_err": float((exact.log_prob + true_nll).abs().max()),
    }


DIGITS_MODELS = ("eps", "v")


def _digits_config(param: str, steps: int):
    """The ``digits-vp`` preset (UNet on ``digits``) made a DDPM model: discrete VP process (T = 1000) and
    discrete training times, so that DDPM's ELBO applies; ``param`` is the network's parameterization and loss
    weighting."""
    from unidm.config import apply_overrides
    from unidm.presets import get_preset

    return apply_overrides(get_preset("digits-vp"), [
        "method.process=vp-discrete", "method.noise_levels=discrete-t", f"method.parameterization={param}",
        f"method.weighting={param}", "method.conditional=false", "model.dropout=0.0",
        "train.batch_size=64", f"train.steps={steps}",
        "train.num_threads=1", "train.progress=false",
        "train.device=cpu", f"train.ckpt_every={steps}"])


def _ode_row(res) -> dict:
    outliers = latent_outliers(res.latent_scale, res.latent[0].numel())
    return {"bpd": _mean_se(res.bits_per_dim), "bpd_median": float(res.bits_per_dim.median()), "nfe": res.nfe,
            "sigma_max": res.sigma_max, "latent_outliers": int(outliers.sum()),
            "latent_scale_max": float(res.latent_scale.max()),
            "bpd_without_outliers": _mean_se(res.bits_per_dim[~outliers])}


def bench_digits_model(param: str, data: Dataset, args) -> dict:
    """One DDPM-type digits model: ODE bits/dim (full range and ``--sigma-max-short``) and its ELBO."""
    from unidm.run import build_model

    cfg = _digits_config(param, args.digits_steps)
    model = build_model(cfg, data)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        result = train(model, data, cfg.train, folder, config_dict=cfg.to_dict(), log=lambda s: None)
        seconds = time.perf_counter() - t0
        denoiser = _ema_denoiser(model, folder)
    x = data.test[: args.digits_n].double()
    levels = data.meta["levels"]
    out = {"model": f"digits-vp preset, process vp-discrete (T=1000), parameterization {param}",
           "parameterization": param, "train_steps": result.step, "train_seconds": seconds, "n": len(x)}
    for key, sigma_max in (("ode", None), ("ode_short", args.sigma_max_short)):
        t0 = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the outliers are counted in the row
            res = log_likelihood(denoiser, x, num_levels=levels, hutchinson=1, sigma_max=sigma_max,
                                 rtol=args.rtol, atol=args.rtol, generator=torch.Generator().manual_seed(1))
        out[key] = {**_ode_row(res), "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    with torch.no_grad():
        e = elbo(denoiser, x, num_levels=levels, variance="beta", num_terms=args.elbo_terms,
                 generator=torch.Generator().manual_seed(2))
    out["elbo"] = {"bpd": _mean_se(e.bits_per_dim), "seconds": time.perf_counter() - t0, "terms": {
        "prior": float(e.prior_term.mean()), "diffusion": float(e.diffusion_term.mean()),
        "decoder": float(e.decoder_term.mean())}}
    return out


def bench_digits(args) -> dict:
    data = build_dataset("digits")
    levels = data.meta["levels"]
    rows = [bench_digits_model(param, data, args) for param in args.digits_params]
    return {"data": "digits", "levels": levels, "uniform_bits_per_dim": math.log2(levels), "models": rows}


def _print_digits(d: dict, args) -> None:
    print(f"\ndigits (held-out, dequantized, {d['levels']} levels; uniform = {d['uniform_bits_per_dim']:.3f} "
          f"bits/dim); ODE with Hutchinson x1, rtol=atol={args.rtol}; ELBO: DDPM's bound, variance beta")
    for r in d["models"]:
        print(f"  model: {r['model']}, {r['train_steps']} steps, n={r['n']}")
        for key in ("ode", "ode_short"):
            o = r[key]
            print(f"    ODE  sigma_max={o['sigma_max']:7.2f}: {o['bpd'][0]:12.4f} +- {o['bpd'][1]:.4f} bits/dim "
                  f"(median {o['bpd_median']:.4f}; {o['latent_outliers']} runaway latents, max latent_scale "
                  f"{o['latent_scale_max']:.3g}; without them {o['bpd_without_outliers'][0]:.4f}; NFE {o['nfe']})")
        e = r["elbo"]
        print(f"    ELBO (same model):        {e['bpd'][0]:12.4f} +- {e['bpd'][1]:.4f} bits/dim")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="training steps of each 2-D model")
    p.add_argument("--digits-steps", type=int, default=2000, help="training steps of each digits model")
    p.add_argument("--digits-params", nargs="+", default=list(DIGITS_MODELS), choices=["eps", "v", "x0", "edm"],
                   help="parameterizations of the DDPM-type digits models")
    p.add_argument("--digits-n", type=int, default=359, help="held-out digits (at most 359)")
    p.add_argument("--sigma-max-short", type=float, default=10.0, help="second, shorter ODE range for digits")
    p.add_argument("--elbo-terms", type=int, default=None, help="stratified terms of the ELBO (default: all T)")
    p.add_argument("--n", type=int, default=300, help="held-out 2-D points")
    p.add_argument("--rtol", type=float, default=1e-4, help="ODE rtol = atol")
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--skip-mixtures", action="store_true", help="keep the mixtures of an existing --out")
    p.add_argument("--out", default="benchmarks/results/likelihood.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [] if args.skip_mixtures else [bench_mixture(name, args) for name in ("gmm-ring", "gmm-grid")]
    print(f"\n2-D held-out NLL (nats), probability-flow ODE, exact divergence, rtol=atol={args.rtol}")
    print(f"{'data':10s} {'trained model':>18s} {'oracle via ODE':>16s} {'true density':>16s} {'entropy':>8s} "
          f"{'NFE':>5s} {'train':>6s}")
    for r in rows:
        print(f"{r['data']:10s} {r['nll_trained'][0]:10.4f} +-{r['nll_trained'][1]:.3f} "
              f"{r['nll_oracle_ode'][0]:9.4f} +-{r['nll_oracle_ode'][1]:.3f} {r['nll_true'][0]:9.4f} "
              f"+-{r['nll_true'][1]:.3f} {r['entropy']:8.4f} {r['nfe_trained']:5d} {r['train_steps']:6d}")
    if args.skip_mixtures and os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f).get("mixtures", [])
    report = {"mixtures": rows, "args": vars(args)}
    if not args.skip_digits:
        d = bench_digits(args)
        report["digits"] = d
        _print_digits(d, args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
