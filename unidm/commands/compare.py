"""``unidm compare RUN [RUN ...] [-n N] [--json] [--out FILE.json] [--plot FILE.png]``: one table of trained runs
of any families on one data set.

For every run, read only through the faces of :mod:`unidm.methods` (never a family's name):

- held-out NLL for **every** likelihood method its family declares (:meth:`~unidm.methods.SupportsLikelihood.
  likelihood_methods`), each with its kind: ``exact`` (the model's own density), ``ode`` (the probability-flow
  ODE's density, exact up to the solver's tolerance) or ``bound`` (a variational upper bound on the NLL: ELBO,
  IWAE). Discrete data (tokens, or images quantized to ``K`` levels) are reported in bits/dim of the discrete data,
  through the one uniform dequantization (:func:`unidm.likelihood.dequantized_log_prob`); continuous data in nats
  per example. ``bits/dim = NLL / (D ln 2)`` in every row;
- sample quality by the project's metrics (:data:`unidm.evaluation.EVALUATORS` for the data's kind, as ``unidm
  eval`` computes them) from ``n`` samples of the run's own sampler, with the sampling time per sample;
- parameters, training steps and training time (from the run's ``metrics.jsonl``: the trainer's clock at its
  last log line, summed over resumed sessions; :func:`train_seconds`; ``~`` in the table marks an estimate).

Runs on different data (another dataset, other dataset options, another shape or number of levels) are refused
with one line: a table holds one data set, whose unit and held-out split every row shares; compare each data set
with its own call (``benchmarks/compare.py`` does this for binary and 17-level digits).

Example:
    >>> from unidm.commands.compare import format_table
    >>> report = {"data": {"name": "moons", "kind": "vector", "shape": [2], "levels": None}, "unit": "nats",
    ...           "n": 4, "runs": [{"run": "runs/a", "family": "gaussian", "params": 1000, "train_seconds": 2.0,
    ...           "steps": 10, "likelihood": [{"method": "ode", "kind": "ode", "nll_nats": {"mean": 1.5,
    ...           "stderr": 0.1}, "bits_per_dim": {"mean": 1.08, "stderr": 0.07}}], "quality": None,
    ...           "sampling": None}]}
    >>> print(format_table(report).splitlines()[2])  # doctest: +NORMALIZE_WHITESPACE
    a  gaussian  ode  ode  1.500 ± 0.100  -  -  1.0k  10  2.0  -
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time

import torch

__all__ = ["add_arguments", "run", "compare_runs", "format_table", "plot_compare", "train_seconds",
           "HEADLINE_METRICS"]

#: the sample-quality metric shown in the table (the first of these the data's evaluator reports; else its first)
HEADLINE_METRICS = ("frechet", "frechet_pixels", "sliced_w2")

KIND_NOTES = {
    "exact": "the model's own density",
    "ode": "the probability-flow ODE's density (exact up to the solver's tolerance, prior and sigma_min)",
    "bound": "an upper bound on the NLL (ELBO / IWAE): the true NLL is lower",
}


def add_arguments(parser: argparse.ArgumentParser, positive_int, device) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders, all trained on the same data")
    parser.add_argument("-n", type=positive_int, help="held-out examples scored and samples drawn per run "
                                                      "(default: the held-out split, at most 2000)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="a likelihood option (repeatable), given to every method whose family lists it, e.g. "
                             "hutchinson=1, rtol=1e-3, num_terms=100, n_t=8; one no method takes is refused")
    parser.add_argument("--no-quality", action="store_true", help="skip the samples (quality, sampling time)")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="examples per likelihood batch")
    parser.add_argument("--seed", type=_seed, default=0, help="dequantization noise, probes and ELBO draws; sample i "
                                                            "uses seed SEED + i")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    parser.add_argument("--out", metavar="FILE.json", help="also write the report as JSON here")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw NLL and sample quality against sampling time")
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps or auto")


def _seed(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def train_seconds(run_dir: str, step: int | None = None) -> tuple[float | None, str]:
    """Training time of a run and how it was found.

    ``"log"``: the trainer's clock (``time`` in ``metrics.jsonl``) at the last log line of each training session,
    summed (a resumed session restarts the clock at 0); ``"log+tail"``: the same, plus the steps after the last log
    line up to ``step`` (a run stopped by a time budget or Ctrl-C between log lines) at the last logged speed;
    ``"file times"``: no log line at all, the time between the run's ``config.json`` (written as training starts)
    and its ``model.safetensors`` (written as it ends); ``(None, "none")`` without either.

    Example:
        >>> import json, os, tempfile
        >>> run = tempfile.mkdtemp()
        >>> lines = [{"step": 50, "time": 2.0, "steps_per_sec": 25.0}, {"step": 60, "time": 0.4, "steps_per_sec": 25.0}]
        >>> with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        ...     f.write("".join(json.dumps(r) + "\\n" for r in lines)) and None
        >>> train_seconds(run, step=70)  # 2.0 + 0.4 (resumed), and 10 steps after the last line at 25 steps/s
        (2.8, 'log+tail')
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    records.append((float(rec["time"]), int(rec["step"]), float(rec.get("steps_per_sec") or 0)))
                except (ValueError, KeyError, TypeError):
                    continue
    if not records:
        files = [os.path.join(run_dir, f) for f in ("config.json", "model.safetensors")]
        if all(os.path.isfile(f) for f in files):
            return max(0.0, os.path.getmtime(files[1]) - os.path.getmtime(files[0])), "file times"
        return None, "none"
    total = sum(a[0] for a, b in itertools.pairwise(records) if b[0] < a[0]) + records[-1][0]
    _, last_step, rate = records[-1]
    if step is not None and step > last_step and rate > 0:
        return total + (step - last_step) / rate, "log+tail"
    return total, "log"


def _data_key(loaded) -> tuple[str, str]:
    """What makes two runs' data the same data set, and its short name."""
    data = loaded.data
    key = json.dumps({"data": loaded.config.data, "shape": list(data.shape), "levels": data.meta.get("levels"),
                      "vocab": data.vocab_size}, sort_keys=True)
    return key, str(loaded.config.data.get("name", data.name))


def _load(paths: list[str], device: str) -> list:
    from ..methods import GenerativeModel, SupportsLikelihood
    from ..run import load_run, require_examples

    runs = []
    for path in paths:
        loaded = load_run(path, device=device)
        if not isinstance(loaded.model, (GenerativeModel, SupportsLikelihood)):
            raise ValueError(f"{path} is a {loaded.config.family!r} run, which neither scores nor draws data")
        require_examples(loaded, "compare")
        runs.append(loaded)
    keys = {_data_key(r)[0] for r in runs}
    if len(keys) > 1:
        names = ", ".join(f"{r.path} ({_data_key(r)[1]} {list(r.data.shape)})" for r in runs)
        raise ValueError(f"runs on different data: {names}; one table compares one data set, so call unidm "
                         "compare once per data set")
    return runs


def _methods(model) -> dict[str, str]:
    from ..methods import SupportsLikelihood

    return dict(model.likelihood_methods()) if isinstance(model, SupportsLikelihood) else {}


def _check_options(runs: list, options: dict, strict: bool = True) -> list[str]:
    """The options no method of any run takes: refused (naming those they take) when ``strict``, else returned."""
    taken = {k for r in runs for m in _methods(r.model) for k in r.model.likelihood_options(m)}
    bad = sorted(set(options) - taken)
    if bad and strict:
        raise ValueError(f"likelihood option(s) {', '.join(map(repr, bad))} apply to no method of these runs; "
                         f"valid: {', '.join(sorted(taken)) or '(none)'}")
    return bad


def _likelihood(loaded, x, options: dict, batch_size: int, seed: int) -> list[dict]:
    from .likelihood import evaluate

    model, rows = loaded.model, []
    levels = loaded.data.meta.get("levels")
    for method, kind in _methods(model).items():
        opts = {k: v for k, v in options.items() if k in model.likelihood_options(method)}
        t0 = time.perf_counter()
        with torch.no_grad():
            row = evaluate(model, x, method, opts, levels, batch_size, seed)
        row.update(declared_kind=kind, options=opts, seconds=time.perf_counter() - t0)
        rows.append(row)
    return rows


def _quality(loaded, n: int, seed: int) -> tuple[dict | None, dict | None]:
    """Sample quality of ``n`` samples of the run's own sampler (``unidm eval``'s evaluator) and the sampling
    time."""
    from ..evaluation.sample_quality import evaluate_samples
    from ..methods import GenerativeModel
    from .guidance import prior_labels

    model, data = loaded.model, loaded.data
    if not isinstance(model, GenerativeModel):
        return None, None
    s = loaded.config.sample
    plan = model.check_sampling(s.sampler, s.steps, s.grid)
    seeds = range(seed, seed + n)
    labels = prior_labels(model, data, seeds)
    t0 = time.perf_counter()
    samples = model.generate(n, seeds=seeds, sampler=plan.sampler, steps=plan.steps, grid=plan.grid, **labels).cpu()
    seconds = time.perf_counter() - t0
    report = evaluate_samples(samples, data, **({"stratified": bool(labels)} if data.kind == "image" else {}))
    metrics = report["metrics"]
    name = next((m for m in HEADLINE_METRICS if m in metrics), next(iter(metrics)))
    sampling = {"sampler": plan.sampler, "steps": plan.steps, "grid": plan.grid, "n": n, "seconds": seconds,
                "seconds_per_sample": seconds / n}
    return {"headline": name, **{k: v for k, v in metrics[name].items() if k in ("value", "floor", "ratio")},
            "report": report}, sampling


def compare_runs(paths: list[str], *, n: int | None = None, options: dict | None = None, quality: bool = True,
                 batch_size: int = 500, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float64,
                 strict_options: bool = True, log=None) -> dict:
    """The report behind ``unidm compare``: every run of ``paths`` (one data set) scored on the same ``n``
    held-out examples by each of its likelihood methods, and its samples' quality. JSON-able. An option no method
    of any run takes is refused, or with ``strict_options=False`` dropped (and listed in ``options_unused``)."""
    options = dict(options or {})
    runs = _load(list(paths), device)
    unused = _check_options(runs, options, strict_options)
    options = {k: v for k, v in options.items() if k not in unused}
    data = runs[0].data
    n = min(n or 2000, len(data.test))
    levels = data.meta.get("levels")
    discrete = levels is not None or data.kind == "tokens"
    out = {"data": {"name": _data_key(runs[0])[1], "config": runs[0].config.data, "kind": data.kind,
                    "shape": list(data.shape), "dim": int(math.prod(data.shape)), "levels": levels,
                    "vocab_size": data.vocab_size, "n_test": len(data.test)},
           "unit": "bits/dim" if discrete else "nats", "n": n, "seed": seed, "options": options,
           "options_unused": unused, "runs": []}
    for loaded in runs:
        if log:
            log(f"compare: {loaded.path} ({loaded.config.family})")
        x = data.test[:n].to(device)
        x = x.to(dtype) if x.is_floating_point() else x
        row = {"run": loaded.path, "name": loaded.config.name, "family": loaded.config.family, "step": loaded.step,
               "params": sum(p.numel() for p in loaded.model.parameters()),
               "steps": loaded.step,
               "likelihood": _likelihood(loaded, x, options, batch_size, seed)}
        row["train_seconds"], row["train_seconds_source"] = train_seconds(loaded.path, loaded.step)
        row["quality"], row["sampling"] = _quality(loaded, n, seed) if quality else (None, None)
        out["runs"].append(row)
    return out


# ------------------------------------------------------------------------------------------------- presenting
def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _count(p: int) -> str:
    return f"{p / 1e6:.2f}M" if p >= 1e6 else f"{p / 1e3:.1f}k"


def _nll_cell(row: dict, unit: str) -> str:
    v = row["bits_per_dim"] if unit == "bits/dim" else row["nll_nats"]
    return f"{v['mean']:.3f} ± {v['stderr']:.3f}"


def _names(report: dict) -> list[str]:
    """Each run's name in the table and the plot: its folder's name, or its path where two folders share a name."""
    short = [os.path.basename(os.path.normpath(r["run"])) or r["run"] for r in report["runs"]]
    return short if len(set(short)) == len(short) else [r["run"] for r in report["runs"]]


def _table_rows(report: dict) -> list[list[str]]:
    rows = []
    for r, name in zip(report["runs"], _names(report)):
        q, s = r["quality"], r["sampling"]
        qcell = "-" if q is None else f"{q['value']:.4g} ({q['ratio']:.2f}x)"
        approx = "~" if r.get("train_seconds_source", "log") != "log" and r["train_seconds"] is not None else ""
        tail = [_count(r["params"]), str(r["steps"]), approx + _fmt(r["train_seconds"], ".1f"),
                "-" if s is None else f"{1e3 * s['seconds_per_sample']:.3g}"]
        lik = r["likelihood"] or [None]
        for i, m in enumerate(lik):
            first = i == 0
            cells = [name if first else "", r["family"] if first else ""]
            if m is None:
                cells += ["(none)", "-", "-", "-"]
            else:
                cells += [m["method"], m["kind"], _nll_cell(m, report["unit"]), _fmt(m.get("nfe_mean"), ".0f")]
            rows.append(cells + ([qcell] + tail if first else [""] * (1 + len(tail))))
    return rows


def format_table(report: dict) -> str:
    """The report as a text table: one line per (run, likelihood method); the run's other columns on its first."""
    d, unit = report["data"], report["unit"]
    what = (f"{d['levels']}-level" if d.get("levels") else (f"{d['vocab_size']}-symbol tokens" if d["kind"] ==
                                                             "tokens" else "continuous"))
    head = (f"{d['name']} ({what}, {d['kind']} {d['shape']}): held-out NLL in "
            f"{'bits/dim of the discrete data' if unit == 'bits/dim' else 'nats per example'} over {report['n']} "
            "examples, lower is better")
    q = next((r["quality"]["headline"] for r in report["runs"] if r["quality"]), "quality")
    cols = ["run", "family", "method", "kind", unit if unit == "bits/dim" else "NLL nats", "NFE",
            f"{q} (x floor)", "params", "steps", "train s", "ms/sample"]
    body = _table_rows(report)
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    kinds = sorted({m["kind"] for r in report["runs"] for m in r["likelihood"]})
    notes = [f"  {k}: {KIND_NOTES[k]}" for k in kinds if k in KIND_NOTES]
    for r, name in zip(report["runs"], _names(report)):
        for m in r["likelihood"]:
            if m.get("latent_outliers"):
                notes.append(f"  {name} {m['method']}: {m['latent_outliers']} runaway latents dominate the mean; "
                             f"median {m['bits_per_dim_median']:.3f} bits/dim (docs/likelihood.md, runaway latents)")
    if d.get("levels"):
        notes.append(f"  continuous densities on the {d['levels']}-level data are uniformly dequantized: "
                     "-log p(x + u) - D log(bin width), whose mean over u is itself an upper bound on the discrete NLL")
    return "\n".join([head, line(cols), *map(line, body), *notes])


def plot_compare(report: dict, path: str) -> str:
    """Two panels against sampling time per sample (log scale): NLL of every (run, method), marked by kind; and
    the headline sample-quality metric's ratio to its floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    markers = {"exact": "o", "ode": "s", "bound": "^"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    unit = report["unit"]
    for i, (r, name) in enumerate(zip(report["runs"], _names(report))):
        if r["sampling"] is None:
            continue
        t, color = 1e3 * r["sampling"]["seconds_per_sample"], f"C{i % 10}"
        for m in r["likelihood"]:
            y = (m["bits_per_dim"] if unit == "bits/dim" else m["nll_nats"])["mean"]
            ax1.scatter(t, y, marker=markers.get(m["kind"], "x"), s=50, color=color)
            ax1.annotate(f"{name} {m['method']}", (t, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if r["quality"] is not None:
            ax2.scatter(t, r["quality"]["ratio"], s=50, color=color)
            ax2.annotate(name, (t, r["quality"]["ratio"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for kind, mk in markers.items():
        note = " (upper bound on NLL)" if kind == "bound" else ""
        ax1.scatter([], [], marker=mk, color="gray", label=kind + note)
    ax1.legend(fontsize=7, loc="best")
    q = next((r["quality"]["headline"] for r in report["runs"] if r["quality"]), "quality")
    ax1.set(xscale="log", xlabel="sampling time per sample (ms)", ylabel=f"held-out NLL ({unit})",
            title=f"{report['data']['name']}: likelihood (lower is better)")
    ax2.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax2.set(xscale="log", xlabel="sampling time per sample (ms)", ylabel=f"{q} / floor (log scale)",
            title="sample quality (1 = as good as real data)")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        lo, hi = ax.get_xlim()
        narrow = hi / lo < 10  # within a decade the minor ticks are the only labels, else they crowd
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g") if narrow
                                     else matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax2.tick_params(axis="y", which="minor", labelsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def to_json(report: dict) -> str:
    """The report as indented JSON (tensors as lists, numpy scalars as numbers)."""
    return json.dumps(report, indent=1, default=_json_default)


def run(args: argparse.Namespace) -> int:
    from ..cli import PLOT_SUFFIXES, _option_items
    from ..train.checkpoint import atomic_write_bytes

    if args.out and not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out}: the report is written as JSON; give a path ending in .json")
    if args.plot and not args.plot.lower().endswith(PLOT_SUFFIXES):
        raise ValueError(f"--plot {args.plot}: the picture's format comes from its suffix; use one of "
                         f"{', '.join(PLOT_SUFFIXES)}")
    report = compare_runs(args.runs, n=args.n, options=_option_items(args.option), quality=not args.no_quality,
                          batch_size=args.batch_size, seed=args.seed, device=args.device)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_bytes(args.out, to_json(report).encode())
    if args.plot:
        plot_compare(report, args.plot)
    print(to_json(report) if args.json else format_table(report))
    return 0
