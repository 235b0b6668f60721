"""Command line: ``unidm presets | train | sample | eval | likelihood``.

    unidm train [PRESET_OR_CONFIG] [--out DIR] [--resume] [--device DEV] [key=value ...]
    unidm sample DIR -n N --sampler NAME --steps K --seed S --out FILE.npz [--plot FILE.png]
    unidm sample DIR --class K [--guidance cfg|classifier --scale W [--classifier DIR]]
    unidm eval DIR [--json]
    unidm likelihood DIR [--split test] [--exact|--hutchinson K]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

__all__ = ["main"]


def _load_config(source: str | None, overrides: list[str]):
    from .config import RunConfig, apply_overrides
    from .presets import DEFAULT_PRESET, get_preset

    source = source or DEFAULT_PRESET
    if source.endswith(".json") or os.path.isfile(source):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"config file not found: {source}")
        with open(source) as f:
            cfg = RunConfig.from_dict(json.load(f))
        if not cfg.name:
            cfg.name = os.path.splitext(os.path.basename(source))[0]
    else:
        cfg = get_preset(source)
    return apply_overrides(cfg, overrides)


def cmd_presets(args) -> int:
    from .presets import DEFAULT_PRESET, PRESETS

    for name, d in PRESETS.items():
        method = d.get("method", {})
        what = method.get("process", d.get("family", ""))
        mark = "  (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:28s} family={d.get('family', 'gaussian'):10s} data={d['data']['name']:14s} {what}{mark}")
    return 0


def cmd_train(args) -> int:
    from .evaluation.plots import plot_samples
    from .run import build_data, build_model
    from .train import train

    source, overrides = None, []
    for item in args.items:
        if "=" in item and not os.path.isfile(item):
            overrides.append(item)
        elif source is None:
            source = item
        else:
            raise ValueError(f"two presets or configs given ({source!r}, {item!r}); overrides are key=value")
    if args.resume and args.out and os.path.isfile(os.path.join(args.out, "config.json")) and source is None:
        source = os.path.join(args.out, "config.json")
    cfg = _load_config(source, overrides)
    if args.device:
        cfg.train.device = args.device
    out = args.out or os.path.join("runs", cfg.name or "run")
    data = build_data(cfg)
    model = build_model(cfg, data)
    n_params = sum(p.numel() for p in model.parameters())
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"unidm train: {cfg.name or 'config'} -> {out}  ({n_params / 1e6:.3f} M parameters, "
              f"{len(data.train)} training examples, {cfg.train.steps} steps)")
    result = train(model, data, cfg.train, out, resume=args.resume, config_dict=cfg.to_dict())
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {result.step} steps in {result.wall_time:.1f} s ({result.steps_per_sec:.1f} steps/s), "
          f"final loss {result.loss:.4f}")
    from .commands import guidance
    from .run import load_run

    run = load_run(out, device=model.device)
    if cfg.family == "classifier":
        print(guidance.classifier_summary(run))
        return 0
    s = cfg.sample
    t0 = time.perf_counter()
    n_pic = min(s.n, 2000 if data.kind == "vector" else 64)
    seeds = range(s.seed, s.seed + n_pic)
    samples = run.model.generate(n_pic, seeds=seeds, sampler=s.sampler, steps=s.steps, grid=s.grid,
                                 **guidance.prior_labels(run.model, run.data, seeds))
    path = plot_samples(samples.cpu(), data, os.path.join(out, "samples.png"),
                        title=f"{cfg.name}: {s.sampler}, {s.steps} steps")
    print(f"samples: {path} ({time.perf_counter() - t0:.1f} s)")
    if data.kind == "image" and cfg.family == "gaussian":
        from .evaluation.image_plots import plot_trajectory

        strip = plot_trajectory(run.model, data, os.path.join(out, "trajectory.png"), sampler=s.sampler,
                                steps=s.steps, grid=s.grid, **guidance.prior_labels(run.model, run.data, range(6)))
        print(f"denoising trajectory: {strip}")
    return 0


def _sampler_options(items: list[str]) -> dict:
    from .config import parse_value

    opts = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--option {item!r} is not key=value")
        k, v = item.split("=", 1)
        opts[k] = parse_value(v)
    return opts


def cmd_sample(args) -> int:
    from .evaluation.plots import plot_samples
    from .run import load_run

    from .commands import guidance

    run = load_run(args.run, device=args.device or "cpu")
    extra = guidance.generate_options(run, args)
    s = run.config.sample
    sampler = args.sampler or s.sampler
    steps = args.steps or s.steps
    grid = args.grid or s.grid
    seeds = range(args.seed, args.seed + args.n)
    t0 = time.perf_counter()
    chunks = []
    for start in range(0, args.n, args.batch_size):
        chunk = seeds[start:start + args.batch_size]
        chunks.append(run.model.generate(len(chunk), seeds=chunk, sampler=sampler, steps=steps, grid=grid,
                                         **extra, **guidance.prior_labels(run.model, run.data, chunk, args),
                                         **_sampler_options(args.option)).cpu())
    x = torch.cat(chunks)
    dt = time.perf_counter() - t0
    out = args.out or os.path.join(args.run, "samples.npz")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, samples=x.numpy(), seeds=np.asarray(list(seeds)))
    print(f"{args.n} samples ({sampler}, {steps} steps, {grid} grid) in {dt:.2f} s -> {out}")
    if args.plot:
        print(f"plot: {plot_samples(x, run.data, args.plot, title=f'{sampler}, {steps} steps')}")
    return 0


def cmd_eval(args) -> int:
    from .commands import guidance
    from .evaluation.sample_quality import evaluate_samples
    from .run import load_run

    run = load_run(args.run, device=args.device or "cpu")
    s = run.config.sample
    # images: as many samples as training images, so the Fréchet floor is the whole training split's (no draw)
    default_n = max(len(run.data.test), len(run.data.train)) if run.data.kind == "image" else len(run.data.test)
    n = args.n or min(default_n, 10_000)
    sampler, steps = args.sampler or s.sampler, args.steps or s.steps
    t0 = time.perf_counter()
    samples = torch.cat([
        run.model.generate(len(c), seeds=c, sampler=sampler, steps=steps, grid=s.grid,
                           **guidance.prior_labels(run.model, run.data, c, args)).cpu()
        for c in (range(a, min(a + 5000, n)) for a in range(0, n, 5000))
    ])
    stratified = bool(guidance.prior_labels(run.model, run.data, range(1), args))
    labels = ("null label" if args.null_label else "stratified labels in the training class frequencies") \
        if getattr(run.model, "num_classes", 0) else None
    options = {"stratified": stratified} if run.data.kind == "image" else {}
    report = {"run": args.run, "step": run.step, "sampler": sampler, "steps": steps, "labels": labels,
              "sample_seconds": time.perf_counter() - t0, **evaluate_samples(samples, run.data, **options)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    counts = (f"{report['n_frechet']} samples ({report['n']} of them for precision, recall, memorization, c2st)"
              if "n_frechet" in report else f"{report['n']} samples")
    print(f"{args.run} (step {run.step}), {counts}, {sampler} {steps} steps")
    print(f"{'metric':14s} {'value':>12s} {'floor':>12s} {'ratio':>8s}")
    for name, m in report["metrics"].items():
        print(f"{name:14s} {m['value']:12.5f} {m['floor']:12.5f} {m['ratio']:8.2f}")
    resampled = report["metrics"].get("frechet", {}).get("resampled")
    if resampled:
        within = ", within classes" if resampled["stratified"] else ""
        ratio = report["metrics"]["frechet"]["ratio_resampled"]
        print(f"{'  resampled':14s} {'':12s} {resampled['mean']:12.5f} {ratio:8.2f}   (Fréchet floor of fresh draws "
              f"from the training split{within}: std {resampled['std']:.4f}, 95th percentile {resampled['p95']:.4f},"
              f" {resampled['draws']} draws)")
    if "cross_entropy" in report:
        ce = report["cross_entropy"]
        print(f"cross-entropy under the true density {ce['value']:.4f} nats; true entropy {ce['entropy']:.4f} "
              f"(gap {ce['gap']:+.4f})")
    for key, value in report.items():
        if key not in ("run", "step", "sampler", "steps", "sample_seconds", "n", "n_frechet", "metrics",
                       "cross_entropy") and value is not None:
            print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .commands import guidance, likelihood
    from .samplers import ALIASES, METHODS

    p = argparse.ArgumentParser(prog="unidm", description="Diffusion and flow models on one denoiser contract.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("presets", help="list the named run configs")
    sp.set_defaults(fn=cmd_presets)

    sp = sub.add_parser("train", help="train a preset or a config file")
    sp.add_argument("items", nargs="*", metavar="PRESET_OR_CONFIG [key=value ...]",
                    help="a preset name or config.json (default: the default preset), then overrides "
                         "section.key=value, e.g. train.steps=2000 method.process=ve")
    sp.add_argument("--out", help="run folder (default runs/<preset>)")
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest whole checkpoint (also under torchrun)")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    sp.set_defaults(fn=cmd_train)

    names = sorted(set(METHODS) | set(ALIASES))
    sp = sub.add_parser("sample", help="draw samples from a trained run")
    sp.add_argument("run", help="run folder")
    sp.add_argument("-n", type=int, default=1000)
    sp.add_argument("--sampler", metavar="NAME",
                    help=f"Gaussian models: {', '.join(names)}; masked: ancestral, greedy; blur: ancestral, cold")
    sp.add_argument("--steps", type=int, help="grid steps (NFE depends on the sampler)")
    sp.add_argument("--grid", help="noise-level grid (karras, uniform-t, ...)")
    sp.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED + i, whatever the batch")
    sp.add_argument("--batch-size", type=int, default=5000)
    sp.add_argument("--option", action="append", help="sampler option key=value (repeatable)")
    sp.add_argument("--out", help="output .npz (default DIR/samples.npz)")
    sp.add_argument("--plot", help="also write a picture here")
    sp.add_argument("--device")
    guidance.add_sample_arguments(sp)
    sp.set_defaults(fn=cmd_sample)

    sp = sub.add_parser("eval", help="sample quality against held-out data, with noise floors")
    sp.add_argument("run")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("-n", type=int,
                    help="number of samples (default: held-out size, or training size for images; at most 10000)")
    sp.add_argument("--sampler")
    sp.add_argument("--steps", type=int)
    sp.add_argument("--null-label", action="store_true",
                    help="a conditional run: evaluate its unconditional model (null label) instead of labels with "
                         "the training class frequencies")
    sp.add_argument("--device")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("likelihood", help="held-out log-likelihood: bits/dim through the probability-flow ODE")
    likelihood.add_arguments(sp)
    sp.set_defaults(fn=likelihood.run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "train" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = list(args.items) + extra
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"unidm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .train import CheckpointError, TrainingDiverged

        if isinstance(e, (TrainingDiverged, CheckpointError)):
            print(f"unidm {args.command}: error: {e}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
