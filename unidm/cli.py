"""Command line: ``unidm presets | train | sample | eval | likelihood``.

    unidm train [PRESET_OR_CONFIG] [--out DIR] [--resume] [--device DEV] [key=value ...]
    unidm sample DIR -n N --sampler NAME --steps K --seed S --out FILE.npz [--plot FILE.png]
    unidm sample DIR --class K [--guidance cfg|classifier --scale W [--classifier DIR]]
    unidm eval DIR [--json]
    unidm likelihood DIR [--split test] [--method M] [--exact|--hutchinson K] [--elbo]

The command line reads only the faces of :mod:`unidm.methods` (what a family can do), never a family's name. A
mistake of the user's is one line on stderr and exit code 2; nothing is written before every value is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings

import numpy as np
import torch

__all__ = ["main", "build_parser"]

#: picture formats ``--plot`` writes
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------------------ argument types
def _int_at_least(low: int):
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


positive_int = _int_at_least(1)
seed_int = _int_at_least(0)


def device_name(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``, and one this machine has."""
    if not re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; valid: cpu, cuda, cuda:N, mps, auto")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but CUDA is not available here; use --device cpu")
        if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError("'mps' asked for, but MPS is not available here; use --device cpu")
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


def _option_items(items: list[str] | None) -> dict:
    """``--option key=value`` items as a dict (values parsed as in config overrides)."""
    from .config import parse_value

    opts = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--option {item!r} is not key=value (e.g. --option s_churn=10)")
        key, value = item.split("=", 1)
        opts[key.strip()] = parse_value(value, f"--option {key.strip()}")
    return opts


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------------------------------- presets
def cmd_presets(args) -> int:
    from .presets import DEFAULT_PRESET, PRESETS, get_preset

    for name in PRESETS:
        cfg = get_preset(name)
        what = cfg.method.get("process", cfg.family)
        mark = "  (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:28s} family={cfg.family:10s} data={cfg.data['name']:14s} {what}{mark}")
    return 0


# ------------------------------------------------------------------------------------------------------- train
def _read_config(path: str):
    from .config import RunConfig

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 JSON config: {e}") from None
    return RunConfig.from_json(text, source=path)


def _load_config(source: str | None, overrides: list[str]):
    from .config import apply_overrides
    from .presets import DEFAULT_PRESET, get_preset

    source = source or DEFAULT_PRESET
    if source.endswith(".json") or os.path.isfile(source):
        cfg = _read_config(source)
        if not cfg.name:
            cfg.name = os.path.splitext(os.path.basename(source))[0]
    else:
        cfg = get_preset(source)
    return apply_overrides(cfg, overrides)


def _reached_step(run_dir: str) -> int:
    from .train.checkpoint import list_checkpoints

    steps = [int(m.group(1)) for p in list_checkpoints(run_dir) if (m := re.search(r"(\d+)$", p.rstrip("/")))]
    return max(steps, default=0)


def _train_config(args):
    """The resolved, validated config and the run folder of ``unidm train``; nothing is written here."""
    from .config import apply_overrides, check_resume, resolve_data_paths, safe_run_name
    from .train.runfolder import check_run_folder  # (train checks again under its lock; this is before any work)

    source, overrides = None, []
    for item in args.items:
        if "=" in item and not os.path.isfile(item):
            overrides.append(item)
        elif source is None:
            source = item
        else:
            raise ValueError(f"two presets or configs given ({source!r}, {item!r}); overrides are key=value")
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run folder to continue")
        stored_path = os.path.join(args.out, "config.json")
        if not os.path.isfile(stored_path):
            raise FileNotFoundError(f"--resume: {args.out} is not a run folder (no config.json); nothing to resume")
        check_run_folder(args.out, resume=True)
        stored = resolve_data_paths(_read_config(stored_path))
        cfg = apply_overrides(stored, overrides) if source is None else _load_config(source, overrides)
        if args.device:
            cfg.train.device = args.device
        cfg = _absolute_frozen_runs(resolve_data_paths(cfg))
        if source is not None:  # derived from the data at the start; a preset or config file does not hold it
            cfg.data_info = stored.data_info
        for line in check_resume(stored, cfg, _reached_step(args.out)):
            print(f"resume: {line}")
        return cfg, args.out
    cfg = _load_config(source, overrides)
    if args.device:
        cfg.train.device = args.device
    out = args.out or os.path.join("runs", safe_run_name(cfg.name or "run"))
    check_run_folder(out, resume=False)
    return _absolute_frozen_runs(resolve_data_paths(cfg)), out


def _absolute_frozen_runs(cfg):
    """A frozen run's folder (a family's ``frozen_keys``) stored absolute, like data paths."""
    from .methods import FAMILIES

    for key in getattr(FAMILIES.get(cfg.family), "frozen_keys", ()):
        if isinstance(cfg.method.get(key), str):
            cfg.method[key] = os.path.abspath(cfg.method[key])
    return cfg


def cmd_train(args) -> int:
    from .config import validate_config
    from .evaluation.plots import plot_samples
    from .methods import DenoisingModel, GenerativeModel
    from .run import build_data, build_model, data_info, load_run
    from .train import train

    cfg, out = _train_config(args)
    validate_config(cfg)
    data = build_data(cfg)
    cfg.data_info = data_info(data)
    model = build_model(cfg, data)
    if isinstance(model, GenerativeModel):  # the sampling defaults are checked (and resolved) before training
        plan = model.check_sampling(cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid)
        cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid = plan.sampler, plan.steps, plan.grid
    n_params = sum(p.numel() for p in model.parameters())
    if _is_rank0():
        print(f"unidm train: {cfg.name or 'config'} -> {out}  ({n_params / 1e6:.3f} M parameters, "
              f"{len(data.train)} training examples, {cfg.train.steps} steps)")
    result = train(model, data, cfg.train, out, resume=args.resume, config_dict=cfg.to_dict())
    if not _is_rank0():
        return 0
    print(f"trained {result.step} steps in {result.wall_time:.1f} s ({result.steps_per_sec:.1f} steps/s), "
          f"final loss {result.loss:.4f}")
    from .commands import guidance

    run = load_run(out, device=model.device)
    line = run.model.report(run.data)
    if line:
        print(line)
    if not isinstance(run.model, GenerativeModel):
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
    if data.kind == "image" and isinstance(run.model, DenoisingModel):
        from .evaluation.image_plots import plot_trajectory

        strip = plot_trajectory(run.model, data, os.path.join(out, "trajectory.png"), sampler=s.sampler,
                                steps=s.steps, grid=s.grid, **guidance.prior_labels(run.model, run.data, range(6)))
        print(f"denoising trajectory: {strip}")
    return 0


# ------------------------------------------------------------------------------------------------------ sample
def _generative_run(path: str, device: str):
    from .methods import GenerativeModel
    from .run import load_run

    run = load_run(path, device=device)
    if not isinstance(run.model, GenerativeModel):
        raise ValueError(f"{path} is a {run.config.family!r} run, which does not draw samples")
    return run


def _save_npz(path: str, **arrays) -> None:
    """``np.savez`` to ``path`` through a temporary name in the same folder: an interrupted write leaves no file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.unidm-tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cmd_sample(args) -> int:
    from .commands import guidance
    from .evaluation.plots import plot_samples

    out = args.out or os.path.join(args.run, "samples.npz")
    if not out.endswith(".npz"):
        raise ValueError(f"--out {out}: samples are written as a .npz file; give a path ending in .npz")
    if args.plot and not args.plot.lower().endswith(PLOT_SUFFIXES):
        raise ValueError(f"--plot {args.plot}: the picture's format comes from its suffix; use one of "
                         f"{', '.join(PLOT_SUFFIXES)}")
    run = _generative_run(args.run, args.device)
    s = run.config.sample
    options, grid = _option_items(args.option), args.grid or s.grid
    extra = guidance.generate_options(run, args)
    if options.get("variance") == "analytic" or grid == "dp":  # Analytic-DPM: the run's Gamma statistics (cached)
        from .run import gamma_for_run

        stats, info = gamma_for_run(run)
        how = "cached" if info["cached"] else f"computed in {info['seconds']:.1f} s"
        print(f"Gamma statistics: {info['levels']} levels over {info['n']} training examples ({how}: "
              f"{info['path']})")
        if options.get("variance") == "analytic":
            options["gamma"] = stats
        if grid == "dp":
            extra["grid_options"] = {"gamma": stats}
    plan = run.model.check_sampling(args.sampler or s.sampler, args.steps or s.steps, grid, options)
    if plan.grid == "tuned":  # a grid fitted to these weights by `unidm tune-grid` (refused if absent or stale)
        from .run import load_tuned_grid

        tuned = load_tuned_grid(run, plan.sampler, plan.steps, plan.options, _tuning_conditioning(args))
        extra["grid_options"] = {"tuned": tuned}
        print(f"tuned grid ({tuned.sampler}, {tuned.nfe} NFE): {' '.join(f'{v:.4g}' for v in tuned.sigmas.tolist())}")
    seeds = range(args.seed, args.seed + args.n)
    t0 = time.perf_counter()
    chunks = []
    for start in range(0, args.n, args.batch_size):
        chunk = seeds[start:start + args.batch_size]
        chunks.append(run.model.generate(len(chunk), seeds=chunk, sampler=plan.sampler, steps=plan.steps,
                                         grid=plan.grid, **extra, **guidance.prior_labels(run.model, run.data, chunk,
                                                                                          args),
                                         **plan.options).cpu())
    x = torch.cat(chunks)
    dt = time.perf_counter() - t0
    _save_npz(out, samples=x.numpy(), seeds=np.asarray(list(seeds)))
    print(f"{args.n} samples ({plan.sampler}, {plan.steps} steps, {plan.grid} grid) in {dt:.2f} s -> {out}")
    if args.plot:
        print(f"plot: {plot_samples(x, run.data, args.plot, title=f'{plan.sampler}, {plan.steps} steps')}")
    return 0


# --------------------------------------------------------------------------------------------------- tune-grid
def _tuning_conditioning(args) -> dict:
    """The conditional / guided sampling flags that change the denoiser, as JSON (it keys a tuned grid's file)."""
    keys = ("class_label", "null_label", "guidance", "guide", "scale", "classifier", "sigma_lo", "sigma_hi",
            "rescale")
    if getattr(args, "class_label", None) is None and not getattr(args, "guidance", None) \
            and not getattr(args, "null_label", False):
        return {}
    return {k: (str(v) if isinstance(v, float) and abs(v) == float("inf") else v)
            for k in keys if (v := getattr(args, k, None)) is not None}


def cmd_tune_grid(args) -> int:
    from .commands import guidance
    from .run import tuned_grid_for_run

    run = _generative_run(args.run, args.device)
    plan = run.model.check_sampling(args.sampler, 1, "tuned", _option_items(args.option))
    extra = guidance.generate_options(run, args)
    cond = {}
    labels = extra.get("class_labels", None)
    if labels is not None:
        cond["class_labels"] = torch.full((args.samples,), int(labels), dtype=torch.long, device=run.model.device)
    else:
        cond.update(guidance.prior_labels(run.model, run.data, range(args.samples), args))
    tuned, info = tuned_grid_for_run(run, plan.sampler, args.nfe, samples=args.samples, seed=args.seed,
                                     options=plan.options, denoiser=extra.get("denoiser"), cond=cond or None,
                                     conditioning=_tuning_conditioning(args), progress=_is_rank0())
    how = "cached" if info["cached"] else f"fitted in {tuned.seconds:.1f} s, {tuned.evaluations} solves"
    print(f"{tuned.sampler}: {tuned.steps} steps = {tuned.nfe} NFE; RMSE against the adaptive reference on "
          f"{tuned.samples} prior noises: tuned {tuned.error:.4g}, start grid {tuned.init} {tuned.init_error:.4g}, "
          f"Karras {tuned.fixed_errors.get('karras-rho7', float('nan')):.4g} ({how})")
    print(f"grid: {' '.join(f'{v:.4g}' for v in tuned.sigmas.tolist())}")
    print(f"-> {info['path']}; use it with: unidm sample {args.run} --grid tuned --sampler {tuned.sampler} "
          f"--steps {tuned.steps}")
    return 0


# -------------------------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from .commands import guidance
    from .evaluation.sample_quality import evaluate_samples

    from .run import require_examples

    run = _generative_run(args.run, args.device)
    require_examples(run, "eval")
    s = run.config.sample
    plan = run.model.check_sampling(args.sampler or s.sampler, args.steps or s.steps, s.grid)
    # images: as many samples as training images, so the Fréchet floor is the whole training split's (no draw)
    default_n = max(len(run.data.test), len(run.data.train)) if run.data.kind == "image" else len(run.data.test)
    n = args.n or min(default_n, 10_000)
    if run.data.kind != "image" and n > len(run.data.test):
        print(f"note: -n {n}: the held-out split has {len(run.data.test)} examples, so {len(run.data.test)} samples "
              "are compared with them", file=sys.stderr)
        n = len(run.data.test)
    t0 = time.perf_counter()
    samples = torch.cat([
        run.model.generate(len(c), seeds=c, sampler=plan.sampler, steps=plan.steps, grid=plan.grid,
                           **guidance.prior_labels(run.model, run.data, c, args)).cpu()
        for c in (range(a, min(a + 5000, n)) for a in range(0, n, 5000))
    ])
    stratified = bool(guidance.prior_labels(run.model, run.data, range(1), args))
    labels = ("null label" if args.null_label else "stratified labels in the training class frequencies") \
        if run.model.num_classes else None
    options = {"stratified": stratified} if run.data.kind == "image" else {}
    report = {"run": args.run, "step": run.step, "sampler": plan.sampler, "steps": plan.steps, "labels": labels,
              "sample_seconds": time.perf_counter() - t0, **evaluate_samples(samples, run.data, **options)}
    from .evaluation.straightness import flow_report  # straight-path runs: straightness, transport cost

    report.update(flow_report(run.model, n, range(n), **guidance.prior_labels(run.model, run.data, range(n), args)))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_eval(report)
    return 0


def _print_eval(report: dict) -> None:
    counts = (f"{report['n_frechet']} samples ({report['n']} of them for precision, recall, memorization, c2st)"
              if "n_frechet" in report else f"{report['n']} samples")
    print(f"{report['run']} (step {report['step']}), {counts}, {report['sampler']} {report['steps']} steps")
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


# ------------------------------------------------------------------------------------------------------ parser
class _HelpFormatter(argparse.HelpFormatter):
    """Each option's default once, after its help, where it has a real one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit code 2) that points at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .commands import compare, guidance, interop, likelihood

    fmt = _HelpFormatter
    p = _Parser(prog="unidm", description="Diffusion and flow models on one denoiser contract.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sp = sub.add_parser("presets", help="list the named run configs", formatter_class=fmt)
    sp.set_defaults(fn=cmd_presets)

    sp = sub.add_parser("train", help="train a preset or a config file", formatter_class=fmt)
    sp.add_argument("items", nargs="*", metavar="PRESET_OR_CONFIG [key=value ...]",
                    help="a preset name or config.json (default: the default preset), then overrides "
                         "section.key=value, e.g. train.steps=2000 method.process=ve")
    sp.add_argument("--out", help="run folder (default: runs/<name of the preset or config>); must be new or empty, "
                                  "or an existing run with --resume")
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest whole checkpoint (also under torchrun); "
                         "train.steps may grow, the run's other settings must stay")
    sp.add_argument("--device", type=device_name, help="cpu, cuda, cuda:N, mps or auto (default: the config's "
                                                       "train.device, auto = CUDA when present)")
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt)
    sp.add_argument("run", help="run folder")
    sp.add_argument("-n", type=positive_int, default=1000, help="number of samples")
    sp.add_argument("--sampler", metavar="NAME", help="a sampler of the run's family (default: the run's "
                                                      "sample.sampler; a wrong name lists the valid ones)")
    sp.add_argument("--steps", type=positive_int, help="sampling steps (default: the run's sample.steps; NFE "
                                                       "depends on the sampler)")
    sp.add_argument("--grid", help="noise-level grid of the run's family (default: the run's sample.grid)")
    sp.add_argument("--seed", type=seed_int, default=0, help="sample i uses seed SEED + i, whatever the batch")
    sp.add_argument("--batch-size", type=positive_int, default=5000, help="samples drawn at once")
    sp.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a sampler option, checked against the sampler's signature (repeatable), e.g. s_churn=10")
    sp.add_argument("--out", help="output .npz with arrays samples and seeds (default: RUN/samples.npz)")
    sp.add_argument("--plot", help="also write a picture here (.png, .pdf, .svg, .jpg)")
    sp.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    guidance.add_sample_arguments(sp)
    sp.set_defaults(fn=cmd_sample)

    sp = sub.add_parser("tune-grid", help="fit a sampler's noise-level grid to a run's model (for --grid tuned)",
                        formatter_class=fmt)
    sp.add_argument("run", help="run folder (a diffusion / flow run)")
    sp.add_argument("--nfe", type=positive_int, required=True,
                    help="denoiser calls; the sampler takes as many steps as fit (heun: (NFE + 1) // 2)")
    sp.add_argument("--sampler", required=True, metavar="NAME", help="a deterministic fixed-grid sampler")
    sp.add_argument("--samples", type=positive_int, default=256,
                    help="calibration noises drawn from the prior (no data needed)")
    sp.add_argument("--seed", type=seed_int, default=0, help="seed of the calibration noises")
    sp.add_argument("--option", action="append", metavar="KEY=VALUE", help="a sampler option (repeatable), "
                                                                           "e.g. order=2; sample with the same")
    sp.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    guidance.add_sample_arguments(sp)
    sp.set_defaults(fn=cmd_tune_grid)

    sp = sub.add_parser("eval", help="sample quality against held-out data, with noise floors", formatter_class=fmt)
    sp.add_argument("run", help="run folder")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("-n", type=positive_int,
                    help="number of samples (default: held-out size, or training size for images; at most 10000)")
    sp.add_argument("--sampler", help="a sampler of the run's family (default: the run's sample.sampler)")
    sp.add_argument("--steps", type=positive_int, help="sampling steps (default: the run's sample.steps)")
    sp.add_argument("--null-label", action="store_true",
                    help="a conditional run: evaluate its unconditional model (null label) instead of labels with "
                         "the training class frequencies")
    sp.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("likelihood", help="held-out log-likelihood in nats and bits/dim", formatter_class=fmt)
    likelihood.add_arguments(sp, positive_int, device_name)
    sp.set_defaults(fn=likelihood.run)

    sp = sub.add_parser("compare", help="one table of runs on the same data: NLL of every likelihood method, sample "
                                        "quality, parameters, training and sampling time", formatter_class=fmt)
    compare.add_arguments(sp, positive_int, device_name)
    sp.set_defaults(fn=compare.run)

    sp = sub.add_parser("import-diffusers", help="a local diffusers UNet2DModel folder as a unidm run",
                        formatter_class=fmt)
    interop.add_import_arguments(sp, positive_int)
    sp.set_defaults(fn=interop.run_import)

    sp = sub.add_parser("export-diffusers", help="a diffusers-unet2d run as a diffusers DDPMPipeline folder",
                        formatter_class=fmt)
    interop.add_export_arguments(sp)
    sp.set_defaults(fn=interop.run_export)

    from .commands import reflow

    sp = sub.add_parser("reflow", help="straighten a flow: train the next rectified flow on its own ODE's pairs",
                        formatter_class=fmt)
    reflow.add_arguments(sp, positive_int, seed_int, device_name)
    sp.set_defaults(fn=reflow.run)

    sp = sub.add_parser("distill", help="distil a flow to a k-step Euler student on its ODE's pairs",
                        formatter_class=fmt)
    reflow.add_distill_arguments(sp, positive_int, seed_int, device_name)
    sp.set_defaults(fn=reflow.run_distill)
    return p


def main(argv: list[str] | None = None) -> int:
    from .train import CheckpointError, TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "reflow", "distill") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = list(args.items) + extra
    prog = f"unidm {args.command}"
    warnings.formatwarning = lambda message, *_, **__: f"{prog}: warning: {message}\n"  # one line, no source
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (TrainingDiverged, CheckpointError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
