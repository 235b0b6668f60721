"""Every family on binary digits and on 17-level digits: one table each (``unidm compare``), same trainer, same budget.

    python benchmarks/compare.py [--quick] [--data binary-digits digits] [--families F ...] [--presets P ...]
                                 [--budget SECONDS] [--steps N] [-n N] [--reuse]

For each data set the presets are found in :data:`unidm.presets.PRESETS` by their data name, so a family that adds a
preset on that data joins the table with no change here. One preset per family: the one whose model declares the
most likelihood methods (then the first registered); presets that need a frozen run (a teacher) and models that
neither score nor draw data (classifiers) are left out. ``--presets`` names the runs instead.

Every run trains with :func:`unidm.train.train` (the trainer of ``unidm train``) into
``benchmarks/results/compare-runs/<data>/<preset>``, stopped by the first of the preset's ``train.steps``
(``--steps`` replaces it) and the wall-time ``--budget`` (the same for every run; the learning-rate schedule still
follows ``train.steps``, so a run cut by the budget stops before its schedule ends; the table shows the steps
reached). Two changes to the presets, for a like-for-like table: a class-conditional preset is trained
unconditional (``method.conditional=false``, as the likelihood families are), and ``digits-vp`` is trained as DDPM
(``vp-discrete``, T = 1000, discrete training times, eps-parameterized as the preset) so that it reports both its
ODE likelihood and its ELBO.

Then :func:`unidm.commands.compare.compare_runs` scores the first ``-n`` held-out examples by every likelihood method
of every run (the ODE with one Hutchinson probe, the full-T ELBO by a stratified estimate over 100 terms) and draws
``-n`` samples with each run's own sampler for the project's sample-quality metrics. A table per data set goes to
stdout; the reports to ``benchmarks/results/compare.json`` (``compare-quick.json`` with ``--quick``) and the plots
to ``benchmarks/results/compare-<data>.png``.

The default (20 s of training per run, 200 examples) takes about ten minutes on two cores; ``--quick`` (3 s, 50
examples) is a smoke check of a couple of minutes. ``--data moons`` (or any dataset with presets) gives the table
of continuous 2-D data, in nats: the Gaussian diffusion's ODE beside the flows (NICE, RealNVP, Glow, MAF, NSF).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import torch

from unidm.commands.compare import compare_runs, format_table, plot_compare, to_json
from unidm.config import apply_overrides, validate_config
from unidm.methods import GenerativeModel, SupportsLikelihood
from unidm.presets import FROZEN_PRESETS, PRESETS, get_preset
from unidm.run import build_data, build_model, data_info
from unidm.train import train
from unidm.train.checkpoint import atomic_write_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

#: preset -> overrides for this benchmark (module docstring)
OVERRIDES: dict[str, list[str]] = {
    "digits-vp": ["method.process=vp-discrete", "method.noise_levels=discrete-t"],
}
#: likelihood options, each given to the methods whose family lists it (unidm compare --option)
OPTIONS = {"hutchinson": 1, "num_terms": 100}


def _overrides(name: str) -> list[str]:
    cfg = get_preset(name)
    extra = ["method.conditional=false"] if cfg.method.get("conditional") else []
    return extra + OVERRIDES.get(name, [])


def _config(name: str, extra: list[str] = ()):
    cfg = apply_overrides(get_preset(name), [*_overrides(name), *extra])
    validate_config(cfg)
    return cfg


def _likelihood_count(name: str) -> int | None:
    """How many likelihood methods the preset's model declares; None for a model that neither scores nor draws."""
    cfg = _config(name)
    model = build_model(cfg, build_data(cfg))
    if not isinstance(model, (GenerativeModel, SupportsLikelihood)):
        return None
    return len(model.likelihood_methods()) if isinstance(model, SupportsLikelihood) else 0


def discover(data: str, families: list[str] | None) -> list[str]:
    """One preset per family on ``data`` (module docstring)."""
    best: dict[str, tuple[int, str]] = {}
    for name, d in PRESETS.items():
        family = d.get("family", "gaussian")
        if d["data"]["name"] != data or name in FROZEN_PRESETS or (families and family not in families):
            continue
        count = _likelihood_count(name)
        if count is not None and (family not in best or count > best[family][0]):
            best[family] = (count, name)
    return [name for _, name in best.values()]


def train_preset(name: str, out: str, steps: int | None, budget: float, reuse: bool) -> dict:
    """Train preset ``name`` into ``out`` with the project's trainer, stopped by ``steps`` or ``budget`` seconds."""
    if reuse and os.path.isfile(os.path.join(out, "model.safetensors")):
        return {"preset": name, "reused": True}
    if os.path.isfile(os.path.join(out, "config.json")):  # an earlier run of this benchmark's
        shutil.rmtree(out)
    # a log line every 10 steps: a run stopped by the budget between two is timed to within a few steps
    cfg = _config(name, ["train.progress=false", "train.log_every=10", *([f"train.steps={steps}"] if steps else [])])
    data = build_data(cfg)
    cfg.data_info = data_info(data)
    model = build_model(cfg, data)
    if isinstance(model, GenerativeModel):  # as `unidm train` does: the sampling defaults resolved before training
        plan = model.check_sampling(cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid)
        cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid = plan.sampler, plan.steps, plan.grid
    result = train(model, data, cfg.train, out, config_dict=cfg.to_dict(), max_seconds=budget, log=lambda s: None)
    return {"preset": name, "overrides": _overrides(name), "steps": result.step, "steps_planned": cfg.train.steps,
            "wall_time": result.wall_time, "final_loss": result.loss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s of training per run, 50 examples: a smoke check")
    p.add_argument("--data", nargs="+", default=["binary-digits", "digits"], help="data sets, one table each")
    p.add_argument("--families", nargs="+", help="only these families")
    p.add_argument("--presets", nargs="+", help="exactly these presets (instead of one per family)")
    p.add_argument("--budget", type=float, help="training seconds per run (default 20; --quick 3)")
    p.add_argument("--steps", type=int, help="training steps per run (default: each preset's train.steps)")
    p.add_argument("-n", type=int, help="held-out examples scored and samples drawn (default 200; --quick 50)")
    p.add_argument("--reuse", action="store_true", help="reuse runs already trained in the results folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = args.budget or (3.0 if args.quick else 20.0)
    n = args.n or (50 if args.quick else 200)
    options = {**OPTIONS, **({"num_terms": 20} if args.quick else {})}
    t_start = time.perf_counter()
    reports, training = {}, {}
    for data in args.data:
        names = [k for k in args.presets if PRESETS[k]["data"]["name"] == data] if args.presets \
            else discover(data, args.families)
        if not names:
            print(f"{data}: no preset", file=sys.stderr)
            continue
        paths = []
        for name in names:
            out = os.path.join(RESULTS, "compare-runs", data, name)
            t0 = time.perf_counter()
            training[name] = train_preset(name, out, args.steps, budget, args.reuse)
            print(f"trained {name}: {training[name].get('steps', 'reused')} steps "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            paths.append(out)
        report = compare_runs(paths, n=n, options=options, strict_options=False, seed=0,
                              log=lambda s: print(s, file=sys.stderr))
        reports[data] = report
        print(format_table(report) + "\n", flush=True)
        plot_compare(report, os.path.join(RESULTS, f"compare-{data}{'-quick' if args.quick else ''}.png"))
    out = os.path.join(RESULTS, "compare-quick.json" if args.quick else "compare.json")
    os.makedirs(RESULTS, exist_ok=True)
    summary = {"argv": sys.argv[1:], "budget_seconds": budget, "n": n, "options": options, "training": training,
               "seconds": time.perf_counter() - t_start, "threads": torch.get_num_threads(), "tables": reports}
    atomic_write_bytes(out, to_json(summary).encode())
    print(f"-> {out} ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
