"""PFGM and PFGM++ across D: the same network, training budget and sampler for D in {1 (both objectives), 4, 128,
2048, inf}, quality at 10, 20 and 35 NFE, and the robustness the PFGM++ paper claims for moderate D (coarser steps,
the network in bfloat16 autocast). Prints a table and writes JSON.

    python benchmarks/pfgm.py [--datasets gmm-ring checkerboard] [--steps 1000] [--n-eval 4000] [--threads 1]
                              [--digits]

Rows: ``D=1 field`` is the original PFGM objective (family ``pfgm``, preset ``<data>-pfgm``: the normalised empirical
field over a reference batch of 4x the batch); ``D=1 pert`` .. ``D=2048`` are PFGM++'s perturbation objective
(``<data>-pfgmpp-d1`` with ``method.process_options.aug_dim=D``); ``D=inf`` is ``<data>-edm``. Every row trains
``--steps`` steps with the preset's batch, learning rate and MLP (the field model's MLP has N + 1 inputs and
outputs), then samples with the same sampler: Heun on the Karras grid in sigma (``sigma = z`` for the field model,
through its denoiser view ``D(x, z) = x - z v_x / v_z``, which gives the same ODE), ``(nfe + 1) // 2`` steps, so
the NFE columns are 9, 19 and 35. Priors: the PFGM++ kernel at ``sigma_max`` (20 on the toys) for finite D, EDM's
Gaussian for inf, and for the field model PFGM's hemisphere prior at ``z_max = 20`` -- the same law as D = 1's --
clipped at the preset's ``upper_norm`` (5 z_max, about 20% of the draws, as the reference code clips);
``--clip 5`` clips the perturbation models' priors the same way (for D = 1 the unclipped tail, ``P(|x| > k
sigma_max) ~ 1/k``, starts samples thousands out, which a short training does not bring back).

Quality: cross-entropy of the samples under the true density minus the true entropy (nats, mixtures) and sliced W2
over its floor (all datasets); ``--digits`` adds digits (Fréchet distance over the resampled floor and C2ST,
unconditional for every row), which takes far longer. Robustness: the same at 5 NFE (3 Heun steps) and at 19 NFE
with the network under ``torch.autocast("cpu", torch.bfloat16)``. Results go to ``benchmarks/results/pfgm.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time

import torch

from unidm.config import apply_overrides
from unidm.evaluation.metrics import sliced_wasserstein
from unidm.evaluation.sample_quality import evaluate_samples, reference_set
from unidm.methods.pfgm import PoissonFlow, hemisphere_prior
from unidm.presets import get_preset
from unidm.rng import seed_generators
from unidm.run import build_data, build_model, load_run
from unidm.samplers import make_grid, solve
from unidm.train import train

#: (row label, preset suffix, extra overrides)
ROWS = [
    ("D=1 field", "pfgm", []),
    ("D=1 pert", "pfgmpp-d1", []),
    ("D=4", "pfgmpp-d1", ["method.process_options.aug_dim=4"]),
    ("D=128", "pfgmpp-d128", []),
    ("D=2048", "pfgmpp-d2048", []),
    ("D=inf", "edm", []),
]
#: (column, NFE, bf16)
COLUMNS = [("nfe10", 10, False), ("nfe20", 20, False), ("nfe35", 35, False), ("coarse5", 5, False),
           ("bf16@20", 20, True)]


def draw(model, n: int, nfe: int, bf16: bool, clip: float | None = None) -> tuple[torch.Tensor, int]:
    """``n`` samples (seeds ``0..n-1``) with Heun on the Karras grid, ``(nfe + 1) // 2`` steps; ``clip`` (a
    multiple of ``sigma_max``) clips a perturbation model's prior radius as the field model's is clipped."""
    steps = max(1, (nfe + 1) // 2)
    shape = (n, *model.data_shape)
    if isinstance(model, PoissonFlow):
        denoiser = model.as_denoiser()
        grid = make_grid("karras", steps, denoiser.process)
        x = hemisphere_prior(shape, model.z_max, seed_generators(range(n)), upper_norm=model.upper_norm)
    else:
        denoiser = model.denoiser
        grid = make_grid("karras", steps, model.process)
        x = model.process.prior_sample(shape, float(grid[0]), seeds=range(n))
        if clip is not None:
            norm = x.reshape(n, -1).norm(dim=1)
            x = x * (clip * float(grid[0]) / norm).clamp(max=1.0).reshape(-1, *([1] * (x.ndim - 1)))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.eval()
    with torch.no_grad(), cast:
        res = solve(denoiser, x, grid, method="heun")
    return res.x.float(), res.nfe


def score(x: torch.Tensor, data, floor: float | None) -> dict:
    """The figures of the table: the non-finite fraction, then on the finite samples sliced W2 against the held-out
    split over ``floor`` (vectors), the cross-entropy gap under the true density (mixtures), or the image metrics."""
    ok = torch.isfinite(x.reshape(len(x), -1)).all(1)
    out = {"nonfinite": float((~ok).double().mean())}
    if int(ok.sum()) < 10:
        return out
    x = x[ok]
    if data.kind == "image":
        m = evaluate_samples(x, data)["metrics"]
        out["fd_ratio_resampled"] = m["frechet"].get("ratio_resampled", m["frechet"]["ratio"])
        if "c2st" in m:
            out["c2st"] = m["c2st"]["value"]
        return out
    out["sw2_ratio"] = sliced_wasserstein(x, data.test[:len(x)]) / floor
    oracle = data.meta.get("oracle")
    if oracle is not None:
        out["ce_gap"] = float(-oracle.log_prob(x.double()).mean()) - oracle.entropy()
    return out


def sw2_floor(data, n: int) -> float:
    """Sliced W2 between fresh real draws and the held-out split, averaged over 3 draws (as train_toy.py)."""
    test = data.test[:n]
    return sum(sliced_wasserstein(reference_set(data, len(test), seed=12345 + i), test) for i in range(3)) / 3


def run_one(dataset: str, label: str, suffix: str, extra: list[str], args) -> dict:
    over = ["train.progress=false", "train.ckpt_every=1000000", f"train.num_threads={args.threads}",
            f"train.steps={args.steps}", *extra]
    if dataset == "digits" and suffix != "pfgm":
        over.append("method.conditional=false")
    cfg = apply_overrides(get_preset(f"{dataset}-{suffix}"), over)
    data = build_data(cfg)
    model = build_model(cfg, data)
    run_dir = tempfile.mkdtemp(prefix=f"bench-pfgm-{dataset}-")
    try:
        t0 = time.perf_counter()
        train(model, data, cfg.train, run_dir, config_dict=cfg.to_dict(), log=lambda *_: None)
        seconds = time.perf_counter() - t0
        model = load_run(run_dir).model  # the EMA weights
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    n = min(args.n_eval, len(data.test))
    floor = None if data.kind == "image" else sw2_floor(data, n)
    row = {"dataset": dataset, "row": label, "preset": f"{dataset}-{suffix}", "overrides": extra,
           "train_seconds": seconds, "sw2_floor": floor, "params": sum(p.numel() for p in model.parameters())}
    for col, nfe, bf16 in COLUMNS:
        x, used = draw(model, n, nfe, bf16, args.clip)
        row[col] = {"nfe": used, **score(x, data, floor)}
    return row


def fmt(cell: dict, key: str) -> str:
    v = cell.get(key)
    bad = f"!{cell['nonfinite']:.0%}" if cell.get("nonfinite") else ""
    return (f"{v:+8.3f}" if key == "ce_gap" else f"{v:8.2f}") + bad if v is not None else "     n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["gmm-ring", "checkerboard"])
    ap.add_argument("--digits", action="store_true", help="add digits (slow: Fréchet distance, C2ST)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per row (the presets train 4000)")
    ap.add_argument("--n-eval", type=int, default=4000, help="samples per cell (at most the held-out split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clip", type=float, default=None,
                    help="clip the perturbation models' prior radius at this many sigma_max (the field presets: 5)")
    ap.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], help="labels of the rows to run")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "pfgm.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    datasets = [*args.datasets, *(["digits"] if args.digits else [])]
    results = []
    for dataset in datasets:
        keys = (["ce_gap"] if dataset.startswith("gmm") else []) + ["sw2_ratio"] if dataset != "digits" else [
            "fd_ratio_resampled", "c2st"]
        print(f"\n{dataset} ({args.steps} steps; cells: {', '.join(keys)} at each NFE; !x% = non-finite samples)")
        print(f"{'row':10s} " + " ".join(f"{c + ' ' + k:>17s}" for c, _, _ in COLUMNS for k in keys[:1]))
        for label, suffix, extra in ROWS:
            if label not in args.rows:
                continue
            r = run_one(dataset, label, suffix, extra, args)
            results.append(r)
            for k in keys:
                print(f"{label if k == keys[0] else '':10s} " + " ".join(f"{fmt(r[c], k):>17s}" for c, _, _ in COLUMNS)
                      + f"   {k}" + (f"  ({r['train_seconds']:.0f}s train)" if k == keys[0] else ""), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"steps": args.steps, "n_eval": args.n_eval, "clip": args.clip, "threads": args.threads, "columns": COLUMNS,
                   "rows": results}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
