"""``unidm likelihood DIR [--split test | --data FILE.npy] [--out FILE.npz] [--method M] [--exact | --hutchinson K]
[--option KEY=VALUE ...] [--elbo [--steps K] [--variance V] [--trajectory T]]``: held-out log-likelihood of a run, or of the user's own
array, through the family's declared likelihood (:class:`unidm.methods.SupportsLikelihood`).

A Gaussian diffusion / flow model goes through the probability-flow ODE (``ode``, :func:`unidm.likelihood.
log_likelihood`) and, on the ``vp-discrete`` process, DDPM's ELBO (``elbo``, :func:`unidm.likelihood.elbo`); masked
and uniform-replacement diffusion through their ELBO in bits per token; an exact-likelihood family
(:class:`unidm.methods.DensityModel`) through its ``log_prob``. For quantized data (``data.meta["levels"]``, or
``--levels K``) every number is bits/dim of the *discrete* data, through the same uniform dequantization. A family
without a likelihood (blur diffusion, a noisy classifier) is refused with one line.

``--option KEY=VALUE`` (repeatable) passes any option of the method scored, checked against the family's
``likelihood_options(method)`` (e.g. ``--option samples=1000``, the VAE's importance samples ``S``), with the values
parsed as ``unidm compare --option`` parses them.

The ELBO flags ``--steps``, ``--variance`` and ``--trajectory`` (the K-step bound of
:func:`unidm.likelihood.kstep_elbo`, Analytic-DPM's variance, the ELBO-optimal ``dp`` trajectory) go to the family's
``elbo`` likelihood as options, so a family whose ELBO does not take them refuses them with one line. ``analytic``
and ``dp`` need the Gamma statistics: they are computed here over ``--gamma-n`` examples of the training split on
the process's levels (:func:`unidm.likelihood.gamma_statistics`), cached in ``RUN/gamma/`` by the weights' digest.

``--data FILE.npy`` scores the user's examples ``[N, *shape]`` instead of a split; :func:`load_examples` checks them
against the run's data (shape; integer tokens below the vocabulary size; values on the run's ``K``-level grid in
[-1, 1]; finite numbers) and refuses a mismatch with one line. ``--out FILE.npz`` writes the per-example numbers
(``log_likelihood`` in nats, ``bits_per_dim``, ``kind``, ``method``; with ``--elbo`` also ``elbo_log_likelihood``,
``elbo_bits_per_dim``, ``elbo_kind``) atomically, like ``unidm sample``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from torch import Tensor

__all__ = ["add_arguments", "run", "evaluate", "score", "load_examples"]


def add_arguments(parser: argparse.ArgumentParser, positive_int, device) -> None:
    parser.add_argument("run", help="run folder (config.json + model.safetensors)")
    parser.add_argument("--split", choices=["test", "train"], help="which split to score (default: test)")
    parser.add_argument("--data", metavar="FILE.npy", help="score this array [N, *shape] of the user's instead of a "
                                                           "split (checked against the run's data shape and levels)")
    parser.add_argument("--out", metavar="FILE.npz", help="also write per-example log_likelihood (nats), "
                                                          "bits_per_dim and kind here")
    parser.add_argument("--method", help="likelihood method of the run's family (default: its first: ode for "
                                         "Gaussian models, elbo for masked and uniform diffusion, exact for "
                                         "density models)")
    div = parser.add_mutually_exclusive_group()
    div.add_argument("--exact", action="store_true", help="ODE: exact divergence through autograd (the default)")
    div.add_argument("--hutchinson", type=positive_int, metavar="K", help="ODE: Hutchinson's estimator, K probes")
    parser.add_argument("--probe", choices=["rademacher", "gaussian"], help="ODE: Hutchinson probe law "
                                                                            "(default rademacher)")
    parser.add_argument("-n", type=positive_int, help="at most this many examples (default: 2000 of the split, "
                                                       "all of --data)")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="examples per batch")
    parser.add_argument("--rtol", type=float, help="ODE: relative tolerance of the adaptive solver (default 1e-5)")
    parser.add_argument("--atol", type=float, help="ODE: absolute tolerance (default 1e-5)")
    parser.add_argument("--sigma-min", type=float, help="ODE: data end (default: the process's sigma_min)")
    parser.add_argument("--sigma-max", type=float, help="ODE: prior end (default: the process's sigma_max)")
    parser.add_argument("--n-t", type=positive_int, help="token ELBO (masked, uniform diffusion): time "
                                                             "draws per sequence (default 16)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a likelihood option of the run's family (repeatable), as unidm compare takes them, "
                             "e.g. samples=1000 (the VAE's importance samples); one the method does not take is "
                             "refused, naming those it takes")
    parser.add_argument("--levels", type=positive_int, help="quantization levels of the data (default: the "
                                                             "dataset's, if quantized)")
    parser.add_argument("--elbo", action="store_true", help="also report the ELBO (families that have one)")
    parser.add_argument("--steps", type=positive_int, metavar="K", help="ELBO: a K-step trajectory (default: all "
                                                                         "of the process's steps)")
    parser.add_argument("--variance", choices=["beta", "beta-tilde", "analytic"],
                        help="ELBO: reverse variance (default beta; analytic = Analytic-DPM's optimum, from Gamma "
                             "statistics over the training split)")
    parser.add_argument("--trajectory", choices=["even", "quadratic", "dp"],
                        help="ELBO: which K timesteps (default even; dp = the ELBO-optimal ones)")
    parser.add_argument("--gamma-n", type=positive_int, default=500, metavar="N",
                        help="ELBO with analytic / dp: training examples for the Gamma statistics")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of continuous data and the ODE state (the network keeps its own)")
    parser.add_argument("--seed", type=int, default=0, help="dequantization noise, probes and ELBO draws")
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _summary(values: Tensor) -> dict:
    v = values.double()
    return {"mean": float(v.mean()), "stderr": float(v.std() / math.sqrt(max(len(v), 1)))}


def _options(args: argparse.Namespace) -> dict:
    """The estimator options the user set, by their flags or ``--option KEY=VALUE`` (parsed as ``unidm compare``
    parses them; unset ones keep the family's defaults). An option given both ways is refused."""
    from ..cli import _option_items

    names = {"hutchinson": "hutchinson", "probe": "probe", "rtol": "rtol", "atol": "atol", "sigma_min": "sigma_min",
             "sigma_max": "sigma_max", "n_t": "n_t"}
    options = {key: getattr(args, attr) for key, attr in names.items() if getattr(args, attr, None) is not None}
    items = _option_items(getattr(args, "option", None))
    both = sorted(set(items) & set(options))
    if both:
        raise ValueError(f"{', '.join(both)} given both by --option and by its flag "
                         f"({', '.join('--' + k.replace('_', '-') for k in both)}); give it once")
    return {**options, **items}


def _elbo_options(args: argparse.Namespace) -> dict:
    """The K-step ELBO options the user set."""
    return {key: getattr(args, key) for key in ("steps", "variance", "trajectory")
            if getattr(args, key, None) is not None}


def _gamma(loaded, args: argparse.Namespace):
    """Gamma statistics of the run's denoiser over ``--gamma-n`` training examples on its process's levels, cached
    in the run folder (:func:`unidm.run.gamma_for_run`)."""
    from ..likelihood import statistics_sigmas
    from ..methods import DenoisingModel
    from ..run import gamma_for_run

    model = loaded.model
    if not isinstance(model, DenoisingModel):
        raise ValueError(f"--variance analytic and --trajectory dp need a denoising model; {args.run} is a "
                         f"{loaded.config.family!r} run")
    levels = len(statistics_sigmas(model.process))
    if args.steps is not None and args.steps > levels:  # refused before the work, as the ELBO would refuse it
        raise ValueError(f"trajectory {args.trajectory or 'even'!r} needs 1 <= steps <= {levels} (the "
                         f"process's timesteps), got steps={args.steps}")
    return gamma_for_run(loaded, n=args.gamma_n, seed=args.seed, batch_size=args.batch_size,
                         dtype=getattr(torch, args.dtype))


def score(model, x: Tensor, method: str, options: dict, levels: int | None, batch_size: int, seed: int) -> dict:
    """Per-example ``nll`` and ``bits_per_dim`` (float64, CPU) of ``x`` under ``model.likelihood(method=...)``,
    batch by batch from one generator seeded with ``seed`` (so the same examples in the same batches give the same
    numbers, whatever file they came from); with ``kind``, the NFE per batch and the runaway-latent flags."""
    from ..likelihood import latent_outliers

    g = torch.Generator(device=x.device).manual_seed(seed)
    nll, bpd, nfe, outliers, kind = [], [], [], [], None
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        res = model.likelihood(xb, method=method, num_levels=levels, generator=g, **options)
        kind = res.kind
        nll.append(res.nll.double().cpu())
        bpd.append(res.bits_per_dim.double().cpu())
        if res.nfe is not None:
            nfe.append(res.nfe)
        if "latent_scale" in res.extra:
            outliers.append(latent_outliers(res.extra["latent_scale"], int(xb[0].numel())))
    return {"nll": torch.cat(nll), "bits_per_dim": torch.cat(bpd), "kind": kind, "nfe": nfe,
            "outliers": torch.cat(outliers) if outliers else None}


def evaluate(model, x: Tensor, method: str, options: dict, levels: int | None, batch_size: int,
             seed: int, scores: dict | None = None) -> dict:
    """NLL (nats) and bits/dim of ``x`` under ``model.likelihood(method=...)``, batch by batch; a JSON-able
    report. ``scores`` (a dict) receives the per-example numbers of :func:`score`."""
    s = score(model, x, method, options, levels, batch_size, seed)
    if scores is not None:
        scores.update(s)
    bpd_all = s["bits_per_dim"]
    report = {"method": method, "kind": s["kind"], "nll_nats": _summary(s["nll"]), "bits_per_dim": _summary(bpd_all),
              "bits_per_dim_median": float(bpd_all.median())}
    if s["nfe"]:
        report["nfe_mean"] = sum(s["nfe"]) / len(s["nfe"])
    if s["outliers"] is not None:
        report["latent_outliers"] = int(s["outliers"].sum())
    return report


def _grid_error(x: np.ndarray, levels: int) -> float:
    """The largest distance of ``x`` (in units of the bin width) from the ``levels``-level grid of [-1, 1]."""
    k = (x.astype(np.float64) + 1.0) * (levels - 1) / 2.0
    return float(np.abs(k - np.round(k)).max()) if k.size else 0.0


def load_examples(path: str, data) -> Tensor:
    """The array in ``path`` (``.npy``, ``[N, *data.shape]``) as examples of ``data``'s kind, or one line saying
    what is wrong: not found, not an ``.npy`` array (nothing is unpickled), the wrong shape, non-integer or
    out-of-vocabulary tokens, values off the run's ``K``-level grid in [-1, 1], or non-finite numbers.

    Example:
        >>> import tempfile, os, numpy as np
        >>> from unidm.data import build_dataset
        >>> data = build_dataset("moons")
        >>> path = os.path.join(tempfile.mkdtemp(), "pts.npy")
        >>> np.save(path, np.zeros((3, 2), dtype=np.float32))
        >>> load_examples(path, data).shape
        torch.Size([3, 2])
        >>> np.save(path, np.zeros((3, 5), dtype=np.float32))
        >>> load_examples(path, data)
        Traceback (most recent call last):
        ...
        ValueError: --data ...pts.npy: examples of shape (5,), the run's data has shape (2,); give an array [N, 2]
    """
    if not path.endswith(".npy"):
        raise ValueError(f"--data {path}: give a .npy array file [N, {', '.join(map(str, data.shape))}] "
                         "(numpy.save)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--data {path}: no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--data {path} is not a readable .npy array ({first}); nothing is unpickled") from None
    shape, want = tuple(arr.shape), tuple(data.shape)
    if arr.ndim != len(want) + 1 or shape[1:] != want or shape[0] == 0:
        raise ValueError(f"--data {path}: examples of shape {shape[1:] if arr.ndim else ()}"
                         f"{' (no examples)' if arr.ndim and shape[0] == 0 else ''}, the run's data has shape "
                         f"{want}; give an array [N, {', '.join(map(str, want))}]")
    levels = data.meta.get("levels")
    if data.kind == "tokens":
        if arr.dtype.kind not in "iub":
            raise ValueError(f"--data {path}: dtype {arr.dtype}; the run's data are integer tokens 0..."
                             f"{data.vocab_size - 1}")
        bad = (arr < 0) | (arr >= data.vocab_size)
        if bad.any():
            raise ValueError(f"--data {path}: token {int(arr[bad].flat[0])} outside the run's vocabulary "
                             f"0...{data.vocab_size - 1}")
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"--data {path}: dtype {arr.dtype}; the run's data are real numbers")
    if not np.isfinite(arr).all():
        raise ValueError(f"--data {path}: {int((~np.isfinite(arr)).sum())} values are NaN or infinite")
    if levels is not None:
        low, high = float(arr.min()), float(arr.max())
        if low < -1 - 1e-6 or high > 1 + 1e-6 or _grid_error(arr, int(levels)) > 1e-4:
            raise ValueError(f"--data {path}: values in [{low:.4g}, {high:.4g}] are not on the run's {levels}-level "
                             f"grid -1 + 2k/{int(levels) - 1} in [-1, 1] (scale the data as the run's dataset does)")
    return torch.from_numpy(arr.astype(np.float64))


def _check_paths(args: argparse.Namespace) -> None:
    """The flags that name files, checked before any work."""
    if args.data is not None and args.split is not None:
        raise ValueError("--data and --split both given: --data scores the array instead of a split; give one")
    if args.out is not None and not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: per-example numbers are written as a .npz file; give a path ending in "
                         ".npz")


def _examples(loaded, args: argparse.Namespace) -> tuple[Tensor, str]:
    """The examples to score (the user's array, or at most ``-n`` of a split) and where they came from."""
    from ..run import require_examples

    if args.data is not None:
        x, source = load_examples(args.data, loaded.data), args.data
    else:
        require_examples(loaded, "likelihood")
        split = args.split or "test"
        x, source = (loaded.data.test if split == "test" else loaded.data.train), split
    x = x[: args.n if args.n is not None else (len(x) if args.data is not None else 2000)].to(args.device)
    if x.is_floating_point():
        x = x.to(getattr(torch, args.dtype))
    return x, source


def _methods(model, args: argparse.Namespace, loaded) -> tuple[str, dict, dict, list[str], dict | None]:
    """The method, its options, the ELBO's options, every method to score, and the Gamma statistics' info."""
    options = _options(args)
    elbo_options = _elbo_options(args)
    method = model.check_likelihood(args.method, options if not elbo_options else {})
    if elbo_options and method != "elbo" and not args.elbo:
        raise ValueError(f"--{'/--'.join(elbo_options)} apply to the ELBO; add --elbo or --method elbo")
    if method == "elbo":
        options.update(elbo_options)
    method = model.check_likelihood(method, options)
    methods = [method]
    if args.elbo and method != "elbo":
        methods.append(model.check_likelihood("elbo", elbo_options))
    gamma_info = None
    if elbo_options.get("variance") == "analytic" or elbo_options.get("trajectory") == "dp":
        stats, gamma_info = _gamma(loaded, args)
        (options if method == "elbo" else elbo_options)["gamma"] = stats
    return method, options, elbo_options, methods, gamma_info


def _save_scores(path: str, method: str, scores: dict, elbo_scores: dict | None) -> None:
    """Per-example ``log_likelihood`` (nats), ``bits_per_dim``, ``kind`` and ``method`` (``elbo_*`` with
    ``--elbo``) in ``path``, written atomically by :func:`unidm.cli._save_npz`."""
    from ..cli import _save_npz

    arrays = {"log_likelihood": (-scores["nll"]).numpy(), "bits_per_dim": scores["bits_per_dim"].numpy(),
              "kind": np.array(scores["kind"]), "method": np.array(method)}
    if elbo_scores is not None:
        arrays.update(elbo_log_likelihood=(-elbo_scores["nll"]).numpy(),
                      elbo_bits_per_dim=elbo_scores["bits_per_dim"].numpy(), elbo_kind=np.array(elbo_scores["kind"]))
    _save_npz(path, **arrays)


def run(args: argparse.Namespace) -> int:
    from ..methods import SupportsLikelihood
    from ..run import load_run

    t0 = time.perf_counter()
    _check_paths(args)
    loaded = load_run(args.run, device=args.device, weights=args.weights)
    model = loaded.model
    if not isinstance(model, SupportsLikelihood):
        raise ValueError(f"{args.run} is a {loaded.config.family!r} run, and that family has no likelihood "
                         "(families with one: Gaussian diffusion/flow, masked and uniform diffusion, density "
                         "models, the VAE)")
    x, source = _examples(loaded, args)
    method, options, elbo_options, methods, gamma_info = _methods(model, args, loaded)
    levels = args.levels if args.levels is not None else loaded.data.meta.get("levels")
    report: dict = {"run": args.run, "split": source, "step": loaded.step, "n": len(x), "dim": int(x[0].numel()),
                    "levels": levels}
    scores, elbo_scores = {}, None
    with torch.no_grad():
        report.update(evaluate(model, x, method, options, levels, args.batch_size, args.seed, scores))
        if len(methods) > 1:
            elbo_scores = {}
            report["elbo"] = evaluate(model, x, "elbo", elbo_options, levels, args.batch_size, args.seed,
                                      elbo_scores)
    if elbo_options:
        report["elbo_options"] = {k: v for k, v in elbo_options.items() if k != "gamma"}
    if gamma_info is not None:
        report["gamma"] = gamma_info
    oracle = loaded.data.meta.get("oracle")
    if oracle is not None and levels is None:  # analytic data: the floor is the true density on the same points
        report["true_nll_nats"] = _summary(-oracle.log_prob(x.double().cpu()))
        report["entropy_nats"] = oracle.entropy()
    if args.out is not None:
        _save_scores(args.out, method, scores, elbo_scores)
        report["out"] = args.out
    report["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print(report)
    return 0


def _print(r: dict) -> None:
    unit = "bits/dim on the discrete data" if r.get("levels") else "bits/dim"
    where = f"{r['split']} split" if r["split"] in ("test", "train") else r["split"]
    print(f"{r['run']} (step {r['step']}), {where}, {r['n']} examples, dim {r['dim']}, {r['method']} "
          f"({r['kind']})" + (f", mean NFE {r['nfe_mean']:.0f}" if "nfe_mean" in r else ""))
    print(f"  NLL       {r['nll_nats']['mean']:10.4f} +- {r['nll_nats']['stderr']:.4f} nats")
    print(f"  {unit:s}: {r['bits_per_dim']['mean']:.4f} +- {r['bits_per_dim']['stderr']:.4f}")
    if r.get("latent_outliers"):
        print(f"  WARNING: {r['latent_outliers']} runaway latents (far outside the prior) dominate the mean; median "
              f"{r['bits_per_dim_median']:.4f} bits/dim; try a lower --sigma-max (docs/likelihood.md)")
    if "elbo" in r:
        e = r["elbo"]["bits_per_dim"]
        print(f"  ELBO bound: {e['mean']:.4f} +- {e['stderr']:.4f} bits/dim")
    if "elbo_options" in r:
        print("  ELBO with " + ", ".join(f"{k}={v}" for k, v in r["elbo_options"].items()))
    if "gamma" in r:
        g = r["gamma"]
        print(f"  Gamma statistics: {g['n']} training examples, {g['levels']} levels, {g['seconds']:.1f} s")
    if "true_nll_nats" in r:
        print(f"  true density on the same points: {r['true_nll_nats']['mean']:.4f} nats (entropy "
              f"{r['entropy_nats']:.4f}); gap {r['nll_nats']['mean'] - r['true_nll_nats']['mean']:+.4f}")
    if "out" in r:
        print(f"  per-example numbers -> {r['out']}")
    print(f"  ({r['seconds']:.1f} s)")
