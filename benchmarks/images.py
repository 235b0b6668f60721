"""Digits benchmark: train an image preset on CPU, watch the Fréchet distance (in the digits classifier's
features) fall to its held-out floor, then report quality at 10, 20 and 50 NFE, training and sampling speed,
and the classifier two-sample test.

    python benchmarks/images.py [--preset digits-edm] [--threads 2] [--eval-every 250] [--name NAME] [key=value ...]

The table goes to stdout and the JSON to ``benchmarks/results/images-<name>.json`` (``--name`` defaults to the
preset; give one for a run with overrides, e.g. ``--name digits-edm-uncond method.conditional=false``). Training
time excludes the time spent evaluating. Every Fréchet distance compares as many samples as there are training
images (1438 for digits) with the whole held-out split; the floor is the whole training split's distance to it (no
draw involved). "floor reached" is the first evaluation at which the EMA model's samples (``--probe-nfe``
evaluations of DPM-Solver++(2M)) score at or below it; the first crossings of 1.25, 1.5 and 2 times the floor are
reported too (steps, images seen, seconds), so runs that stop short of the floor can still be compared, and the
first crossing of the *resampled floor* (``unidm.evaluation.image_metrics.resampled_floor``): the mean score of fresh
draws from the training split itself (within each class for a conditional preset), what a model that has learned
exactly its training split scores on average (see docs/images.md, *Two floors*). A
class-conditional preset is sampled with one label per seed, stratified in the training class frequencies. The other
metrics (precision, recall, memorization, C2ST) compare as many samples as there are held-out images. The final
table gives, at 10, 20 and 50 NFE, the mean Fréchet distance over ``--seed-sets`` disjoint sets of sample seeds
with their min and max (the distance's own sampling noise), and the same samples rounded to the data's grey levels.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import torch

from unidm.commands.guidance import prior_labels
from unidm.config import apply_overrides
from unidm.evaluation.feature_net import feature_net_for, features
from unidm.evaluation.image_metrics import (
    evaluate_images,
    frechet_distance,
    plot_image_grid,
    plot_trajectory,
    quantize,
    resampled_floor,
)
from unidm.presets import get_preset
from unidm.run import build_data, build_model
from unidm.samplers import make_grid, prior_noise, solve
from unidm.train import train

#: probe thresholds, as multiples of the Fréchet floor, whose first crossing is reported
THRESHOLDS = (1.0, 1.25, 1.5, 2.0)


def draw(model, n: int, nfe: int, seed: int = 0, sampler: str = "dpmpp_2m",
         data=None) -> tuple[torch.Tensor, int, float]:
    """``n`` samples with ``sampler`` on a Karras grid of ``nfe`` steps (DPM-Solver++(2M): one NFE per step);
    returns samples, the counted NFE and the seconds taken. A class-conditional model gets one label per seed
    with ``data``'s training class frequencies, stratified (``Dataset.draw_labels``), as ``unidm sample`` does."""
    t0 = time.perf_counter()
    g = make_grid("karras", nfe, model.process)
    seeds = range(seed, seed + n)
    x = prior_noise((n, *model.data_shape), float(g[0]), seeds=seeds)
    model.eval()
    with torch.no_grad():
        res = solve(model.denoiser, x, g, method=sampler, **prior_labels(model, data, seeds))
    return res.x, res.nfe, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits-edm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=250, help="optimizer steps between Fréchet probes")
    p.add_argument("--probe-nfe", type=int, default=20)
    p.add_argument("--seed-sets", type=int, default=3,
                   help="disjoint sets of sample seeds for the final 10/20/50-NFE table (mean, min and max)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this much time")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--name", help="name of the outputs (default: the preset's), e.g. for a run with overrides")
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.name or args.preset

    cfg = apply_overrides(get_preset(args.preset), [*args.overrides, f"train.num_threads={args.threads}",
                                                    "train.progress=false"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    # as many samples as training images against the whole held-out split; the floor is the whole training
    # split's Fréchet distance to it, which depends on no draw (a floor from a drawn few hundred training images
    # varied 0.50-1.04 for digits; see docs/images.md)
    n = len(data.train)
    t0 = time.perf_counter()
    net = feature_net_for(data, verbose=True)
    feature_seconds = time.perf_counter() - t0
    f_test = features(net, data.test)
    f_train = features(net, data.train)
    floor = frechet_distance(f_train, f_test)
    # a conditional preset is sampled with stratified labels: its fresh draws are compared with draws within classes
    stratified = bool(prior_labels(model, data, range(1)))
    resampled = resampled_floor(f_train, f_test, n, labels=data.train_labels if stratified else None)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters; "
          f"feature net {net.info['task']} acc {net.info.get('held_out_accuracy', float('nan')):.3f} "
          f"({feature_seconds:.1f} s); Fréchet floor {floor:.3f} ({n} training vs {len(data.test)} held-out "
          f"images); resampled floor {resampled['mean']:.3f} +- {resampled['std']:.3f} (fresh draws from the "
          f"training split{', within classes' if stratified else ''})", flush=True)

    # Fréchet levels whose first crossing during training is reported: multiples of the floor, the resampled floor
    targets = {**{factor: factor * floor for factor in THRESHOLDS}, "resampled": resampled["mean"]}
    probe_model = copy.deepcopy(model)
    history: list[dict] = []
    eval_seconds = [0.0]
    reached: dict = {}

    def callback(step: int, m, ema, record: dict) -> None:
        if step % args.eval_every and step != cfg.train.steps:
            return
        t = time.perf_counter()
        ema.copy_to(probe_model)
        x, _, _ = draw(probe_model, n, args.probe_nfe, data=data)
        fd = frechet_distance(features(net, x.clamp(-1, 1)), f_test)
        eval_seconds[0] += time.perf_counter() - t
        train_time = record["time"] - eval_seconds[0] + (time.perf_counter() - t)
        history.append({"step": step, "train_seconds": train_time, "frechet": fd, "loss": record["loss"]})
        at = {"step": step, "images": step * cfg.train.batch_size, "train_seconds": train_time}
        for key, level in targets.items():
            if fd <= level and key not in reached:
                reached[key] = at
        print(f"  step {step:5d}  train {train_time:6.1f} s  loss {record['loss']:.4f}  Fréchet {fd:.3f} "
              f"(floor {floor:.3f}, resampled {resampled['mean']:.3f})", flush=True)

    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, data, cfg.train, run_dir, callback=callback,
                       max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                       log=lambda s: None)
    train_seconds = result.wall_time - eval_seconds[0]
    images_seen = result.step * cfg.train.batch_size
    ema_model = probe_model  # holds the final EMA weights (the last callback ran at the last step)

    levels = int(data.meta.get("levels", 256))
    rows = []
    for nfe in (10, 20, 50):
        sets, rounded, secs = [], [], []
        for k in range(max(1, args.seed_sets)):  # the sets' spread is the Fréchet distance's own sampling noise
            x, counted, sec = draw(ema_model, n, nfe, seed=k * n, data=data)
            sets.append(frechet_distance(features(net, x.clamp(-1, 1)), f_test))
            rounded.append(frechet_distance(features(net, quantize(x, levels)), f_test))
            secs.append(sec)
        fd = sum(sets) / len(sets)
        rows.append({"nfe": counted, "frechet": fd, "frechet_sets": sets, "floor": floor, "ratio": fd / floor,
                     "ratio_resampled": fd / resampled["mean"],
                     "frechet_rounded": sum(rounded) / len(rounded), "seconds": min(secs),
                     "images_per_sec": n / min(secs)})
    best = min(rows, key=lambda r: r["frechet"])
    # fresh seeds for the full metrics: past every seed set of the table
    x, _, _ = draw(ema_model, n, best["nfe"], seed=max(10_000, max(1, args.seed_sets) * n), data=data)
    full = evaluate_images(x, data, stratified=stratified)
    c2st_floor = full["metrics"]["c2st"]["floor"]
    report = {
        "preset": args.preset, "name": name, "overrides": args.overrides, "config": cfg.to_dict(),
        "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()), "n": n, "frechet_floor": floor,
        "frechet_floor_resampled": resampled, "resampled_floor_reached": reached.get("resampled"),
        "train_steps": result.step, "train_seconds": train_seconds,
        "train_images_per_sec": images_seen / train_seconds, "floor_reached": reached.get(1.0),
        "thresholds_reached": {f"{k:g}x": reached.get(k) for k in THRESHOLDS},
        "nfe": rows, "full_metrics_at_nfe": best["nfe"], "metrics": full["metrics"], "history": history,
        "feature_net": full["feature_net"], "c2st_levels": levels,
    }
    os.makedirs(args.out, exist_ok=True)
    plot_image_grid(x, data, os.path.join(args.out, f"images-{name}-samples.png"),
                    f"{name}: dpmpp_2m, {best['nfe']} NFE, {result.step} steps")
    plot_trajectory(ema_model, data, os.path.join(args.out, f"images-{name}-trajectory.png"),
                    **prior_labels(ema_model, data, range(6)))
    path = os.path.join(args.out, f"images-{name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)

    print(f"\n{name}: {result.step} steps x {cfg.train.batch_size} in {train_seconds:.1f} s of training "
          f"= {report['train_images_per_sec']:.0f} images/s ({args.threads} threads)")
    for key in targets:
        r = reached.get(key)
        what = (f"the resampled floor ({resampled['mean']:.3f} +- {resampled['std']:.3f})" if key == "resampled"
                else "the floor" if key == 1 else f"{key:g}x the floor")
        print(f"Fréchet <= {what}: " + (f"first at step {r['step']} ({r['images']} images), {r['train_seconds']:.1f} s "
                                         f"of training" if r else "not reached during training"))
    print(f"\nFréchet: mean [min, max] over {len(rows[0]['frechet_sets'])} disjoint seed sets of {n} samples; "
          f"'rounded': the same samples rounded to the data's {levels} grey levels")
    print(f"{'NFE':>4s} {'Fréchet':>9s} {'[min, max]':>15s} {'floor':>7s} {'ratio':>6s} {'resampled':>10s} "
          f"{'ratio':>6s} {'rounded':>8s} {'sample img/s':>13s}")
    for r in rows:
        spread = f"[{min(r['frechet_sets']):.3f}, {max(r['frechet_sets']):.3f}]"
        print(f"{r['nfe']:4d} {r['frechet']:9.3f} {spread:>15s} {r['floor']:7.3f} {r['ratio']:6.2f} "
              f"{resampled['mean']:10.3f} {r['ratio_resampled']:6.2f} {r['frechet_rounded']:8.3f} "
              f"{r['images_per_sec']:13.1f}")
    print(f"\nat {best['nfe']} NFE (fresh seeds; Fréchet/KID on {full['n_frechet']}, the rest on {full['n']}):")
    for name, m in full["metrics"].items():
        extra = f"   resampled {m['resampled']['mean']:.4f} (ratio {m['ratio_resampled']:.2f})" if "resampled" in m else ""
        print(f"  {name:14s} {m['value']:9.4f}   floor {m['floor']:9.4f}{extra}")
    print(f"  (c2st: accuracy telling samples from held-out images on {levels} grey levels; 0.5 = indistinguishable;"
          f" floor {c2st_floor:.3f})")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
