"""Likelihood benchmark: held-out NLL of trained models next to the floor, and digits bits/dim (ODE and ELBO).

    python benchmarks/likelihood.py [--steps 1500] [--digits-steps 3000] [--n 300] [--rtol 1e-4]

- 2-D analytic mixtures (``gmm-ring``, ``gmm-grid``; EDM preset with a smaller MLP): the NLL (nats) of held-out
  points through the probability-flow ODE with the exact divergence, next to the true density's NLL on the same
  points and its entropy (the floor no model can beat on average), and the same ODE run with the exact oracle
  denoiser (which must land on the floor: the method's own error).
- sklearn digits (8x8, 17 grey levels scaled to [-1, 1]; DDPM-type ``vp-discrete`` model, T = 1000, eps
  parameterization): bits/dim of the discrete held-out digits from the ODE (uniform dequantization, Hutchinson with
  one Rademacher probe) and from DDPM's ELBO (discretized decoder; variances beta and beta-tilde). A uniform model
  is log2(17) = 4.09 bits/dim.

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

import torch

from unidm.config import RunConfig, TrainConfig
from unidm.data import Dataset, build_dataset
from unidm.evaluation.elbo import elbo
from unidm.evaluation.likelihood import log_likelihood
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


def digits_dataset(seed: int = 0) -> Dataset:
    """sklearn's 8x8 digits: integers 0..16 -> 17 levels on [-1, 1] (k / 8 - 1); 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.data).float() / 8.0 - 1.0
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[tr], x[te], kind="vector", train_labels=y[tr], test_labels=y[te], num_classes=10,
                   meta={"levels": 17})


def bench_digits(args) -> dict:
    data = digits_dataset()
    levels = data.meta["levels"]
    net = build_network("mlp", {"dim": 64}, hidden=512, depth=3, embedding="fourier")
    model = GaussianDiffusion(net, "vp-discrete", "eps", "discrete-t", "eps", sigma_data=round(data.std, 4))
    model.data_shape = (64,)
    with tempfile.TemporaryDirectory() as folder:
        result, seconds = _train(model, data, args.digits_steps, 256, 0, folder)
        denoiser = _ema_denoiser(model, folder)
    x = data.test.double()
    g = torch.Generator().manual_seed(1)
    out = {"data": "digits", "levels": levels, "train_steps": result.step, "train_seconds": seconds, "n": len(x),
           "uniform_bits_per_dim": math.log2(levels)}
    t0 = time.perf_counter()
    with torch.no_grad():
        ode = log_likelihood(denoiser, x, num_levels=levels, hutchinson=1, rtol=args.rtol, atol=args.rtol,
                             generator=g)
    out.update(ode_bpd=_mean_se(ode.bits_per_dim), ode_nfe=ode.nfe, ode_seconds=time.perf_counter() - t0,
               ode_sigma_min=ode.sigma_min, ode_sigma_max=ode.sigma_max)
    for variance in ("beta", "beta_tilde"):
        t0 = time.perf_counter()
        with torch.no_grad():
            e = elbo(denoiser, x, num_levels=levels, variance=variance, generator=g)
        out[f"elbo_bpd_{variance}"] = _mean_se(e.bits_per_dim)
        out[f"elbo_terms_{variance}"] = {"prior": float(e.prior_term.mean()), "diffusion":
                                         float(e.diffusion_term.mean()), "decoder": float(e.decoder_term.mean())}
        out[f"elbo_seconds_{variance}"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="training steps of each 2-D model")
    p.add_argument("--digits-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=300, help="held-out 2-D points")
    p.add_argument("--rtol", type=float, default=1e-4, help="ODE rtol = atol")
    p.add_argument("--skip-digits", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [bench_mixture(name, args) for name in ("gmm-ring", "gmm-grid")]
    print(f"\n2-D held-out NLL (nats), probability-flow ODE, exact divergence, rtol=atol={args.rtol}")
    print(f"{'data':10s} {'trained model':>18s} {'oracle via ODE':>16s} {'true density':>16s} {'entropy':>8s} "
          f"{'NFE':>5s} {'train':>6s}")
    for r in rows:
        print(f"{r['data']:10s} {r['nll_trained'][0]:10.4f} +-{r['nll_trained'][1]:.3f} "
              f"{r['nll_oracle_ode'][0]:9.4f} +-{r['nll_oracle_ode'][1]:.3f} {r['nll_true'][0]:9.4f} "
              f"+-{r['nll_true'][1]:.3f} {r['entropy']:8.4f} {r['nfe_trained']:5d} {r['train_steps']:6d}")
    report = {"mixtures": rows, "args": vars(args)}
    if not args.skip_digits:
        d = bench_digits(args)
        report["digits"] = d
        print(f"\ndigits ({d['n']} held-out, {d['levels']} levels; uniform = {d['uniform_bits_per_dim']:.3f} "
              f"bits/dim), vp-discrete T=1000, {d['train_steps']} training steps")
        print(f"  ODE (dequantized, Hutchinson x1): {d['ode_bpd'][0]:.4f} +- {d['ode_bpd'][1]:.4f} bits/dim "
              f"(NFE {d['ode_nfe']}, {d['ode_seconds']:.0f} s)")
        for v in ("beta", "beta_tilde"):
            print(f"  ELBO (variance {v:10s}):     {d[f'elbo_bpd_{v}'][0]:.4f} +- {d[f'elbo_bpd_{v}'][1]:.4f} "
                  f"bits/dim  terms {d[f'elbo_terms_{v}']}")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/likelihood.json", "w") as f:
        json.dump(report, f, indent=2)
    print("\nwrote benchmarks/results/likelihood.json")


if __name__ == "__main__":
    main()
