"""Rectified flow to few steps: 1-RF, 2-RF, 3-RF, 2-RF + distillation, OT and SB couplings (and torchcfm's I-CFM
and OT-CFM with the same network and wall time), at 1, 2, 4 and 8 Euler steps, with their straightness.

    python benchmarks/reflow.py [--quick] [--datasets moons gmm-ring checkerboard digits] [--steps 1000]
                                [--reflow-steps 600] [--pairs 6000] [--n-eval 2000] [--sb-reg 0.5] [--threads 1]
                                [--reflow-noise-levels uniform-t] [--keep DIR [--reuse]] [--json NAME]
                                [--hidden 128] [--parent-overrides K=V ...] [--reflow-overrides K=V ...]
                                [--distill-steps N] [--distill-overrides K=V ...] [--distill-from 2-RF|3-RF]
                                [--rows ... 2-RF* 2-RF*+D1]

Every row trains through the command line (``unidm train`` / ``unidm reflow`` / ``unidm distill``) from the
``<data>-flow`` preset (toys: the preset's MLP at 128 wide and batch 256, so the whole benchmark fits a small CPU
budget; digits: the preset's UNet, class-conditional):

- ``1-RF``: ``--steps`` steps, independent coupling; ``OT`` / ``SB``: the same with ``method.coupling=ot`` / ``sb``
  (``ot-class`` / ``sb-class`` for the conditional digits; SB with ``method.coupling_reg=--sb-reg``);
- ``2-RF``: ``unidm reflow`` of 1-RF (``--pairs`` pairs through the adaptive solver, ``--reflow-steps`` steps from
  1-RF's weights, training times uniform in t: ``method.noise_levels=uniform-t``); ``3-RF``: ``unidm reflow`` of 2-RF; ``2-RF+D1``: ``unidm distill --steps 1`` of 2-RF on the same
  pairs as 3-RF (``--pairs-from``);
- ``I-CFM`` / ``OT-CFM`` (when torchcfm imports: ``pip install --no-deps torchcfm pot``; its declared dependencies
  pull torchvision through torchdyn, the matcher itself needs only POT): the same network (raw, as ``v(x_t, t)``)
  trained with torchcfm's matchers, Adam at the preset's rate and EMA 0.999, for 1-RF's training wall time.

Sampling: Euler with k = 1, 2, 4, 8 equal steps in t from every model's own prior noise of seeds 10000.. (for the
unidm runs the ``uniform-t`` grid with ``t_min = t_max / k``). Quality: vectors, sliced W2 over its floor and, for the
mixture, the cross-entropy gap (nats) of the samples under the true density; digits, the Fréchet distance over the
resampled floor and C2ST accuracy (0.5 = indistinguishable). ``ref`` is the 1-RF parent with the preset's own
sampler (for digits 20 NFE of DPM-Solver++(2M); for the toys Heun 64 steps). Straightness ``S`` and transport cost
along each model's ODE (64 Euler steps; :func:`unidm.evaluation.straightness.flow_report`). Goals: one-step 2-RF +
distill digits within 2x the parent's 20-NFE Fréchet distance; the mixture's one-step cross-entropy gap within 0.1.
For a mixture, also the share of samples between the components (``leak``: below the true law's 0.1% log-density
quantile) and the gap of the rest (``ce_gap_inside``), and each parent's gap at the pairs' adaptive solver (the
ends ``x1`` of its pairs). The rows ``2-RF*`` / ``2-RF*+D1`` (only on request) replace 1-RF's coupling by the
mixture's exact ODE (its oracle denoiser, same seeds and solver): what reflow and distillation reach with a
perfect parent. Results: ``benchmarks/results/reflow[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch

from unidm.cli import main as unidm
from unidm.commands.guidance import prior_labels
from unidm.evaluation.metrics import sliced_wasserstein
from unidm.evaluation.sample_quality import evaluate_samples, reference_set
from unidm.evaluation.straightness import flow_report, ode_straightness
from unidm.presets import get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import EMA

NFES = (1, 2, 4, 8)
SEED = 10_000
ROWS = ("1-RF", "OT", "SB", "2-RF", "3-RF", "2-RF+D1", "I-CFM", "OT-CFM")
#: rows on the exact parent (mixtures only, with --rows): ``2-RF*`` reflows 1-RF's weights on the pairs of the
#: mixture's exact probability-flow ODE (the oracle denoiser, same seeds and solver), ``2-RF*+D1`` distils 2-RF*
#: on those pairs; they separate the parent's error from reflow's and distillation's own
EXACT_ROWS = ("2-RF*", "2-RF*+D1")
UNIDM_ROWS = ("1-RF", "OT", "SB", "2-RF", "3-RF", "2-RF+D1", *EXACT_ROWS)


def _quiet(args: list[str]) -> int:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = unidm(args)
    if code != 0:
        raise RuntimeError(f"unidm {' '.join(args)} failed ({code}): {buf.getvalue()[-500:]}")
    return code


def _train_seconds(run_dir: str) -> float:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return float(json.loads(f.read().strip().splitlines()[-1])["time"])


_FLOORS: dict = {}
_LEAK: dict = {}


def _quality(samples: torch.Tensor, data) -> dict:
    """Images: ``unidm eval``'s evaluator (Fréchet over the resampled floor, C2ST). Vectors: sliced W2 against the
    held-out split over its floor (the mean of three fresh real draws, computed once per dataset, as
    :func:`unidm.evaluation.metrics.compare` does) and, for a mixture, the cross-entropy gap under the true density."""
    samples = samples.float().cpu()
    if data.kind == "image":
        m = evaluate_samples(samples, data, stratified=True)["metrics"]
        fd = m["frechet"]
        return {"frechet": fd["value"], "frechet_floor": fd["resampled"]["mean"], "frechet_ratio": fd["ratio_resampled"],
                "c2st": m.get("c2st", {}).get("value")}
    test = data.test[: len(samples)].float()
    key = (data.name, len(test))
    if key not in _FLOORS:
        refs = [reference_set(data, len(test), seed=12345 + i) for i in range(3)]
        _FLOORS[key] = sum(sliced_wasserstein(r.float(), test) for r in refs) / len(refs)
    sw2 = sliced_wasserstein(samples[: len(test)], test)
    out = {"sw2": sw2, "sw2_floor": _FLOORS[key], "sw2_ratio": sw2 / _FLOORS[key]}
    oracle = data.meta.get("oracle")
    if oracle is not None:
        lp = oracle.log_prob(samples.double())
        out["ce_gap"] = float(-lp.mean()) - oracle.entropy()
        # where the gap comes from: the share of samples below the true law's 0.1% log-density quantile (between
        # the components), and the gap of the others
        if data.name not in _LEAK:
            _LEAK[data.name] = float(oracle.log_prob(oracle.sample(
                200_000, generator=torch.Generator().manual_seed(0))).quantile(1e-3))
        inside = lp >= _LEAK[data.name]
        out["leak"] = 1 - float(inside.double().mean())
        out["ce_gap_inside"] = float(-lp[inside].mean()) - oracle.entropy()
    return out


def _unidm_row(run_dir: str, n: int) -> dict:
    run = load_run(run_dir)
    model, data = run.model, run.data
    seeds = range(SEED, SEED + n)
    labels = prior_labels(model, data, seeds)
    row = {"train_seconds": _train_seconds(run_dir)}
    for k in NFES:
        x = model.generate(n, seeds=seeds, sampler="euler", steps=k, grid="uniform-t",
                           grid_options={"t_min": model.process.t_max_sampling / k}, **labels)
        row[f"nfe{k}"] = _quality(x, data)
    row.update(flow_report(model, n, seeds=seeds, steps=64, **labels))
    return row


def _pairs_gap(folder: str, data) -> float | None:
    """The cross-entropy gap of a pairs folder's ends ``x1`` (the parent at the pairs' solver, adaptive by
    default) under the mixture's true density; None without a density or pairs."""
    from unidm.data.pairs import read_manifest, read_pairs

    oracle = data.meta.get("oracle")
    if oracle is None or not os.path.isfile(os.path.join(folder, "pairs.json")):
        return None
    x1 = read_pairs(folder, read_manifest(folder)["digest"])["x1"]
    return float(-oracle.log_prob(x1.double()).mean()) - oracle.entropy()


def _exact_pairs(parent_dir: str, folder: str, n: int, chunk: int) -> None:
    """Pairs ``(z, x1)`` of the mixture's exact probability-flow ODE (its oracle denoiser) for the seeds and
    solver a reflow of ``parent_dir`` would use, filed under that parent's weights digest so that ``unidm reflow
    / distill --pairs-from`` take them: a measurement device for the exact parent, nothing more."""
    from unidm.pairs import coupling_pairs, pairs_spec, write_pairs

    run = load_run(parent_dir)
    oracle = run.data.meta["oracle"]
    spec = pairs_spec(run.model, parent_dir, n, 0, "adaptive", None, chunk)

    def make_chunk(seeds: range) -> dict:
        z, x1 = coupling_pairs(oracle, run.model.process, seeds, run.model.data_shape)
        return {"z": z.float(), "x1": x1.float()}

    write_pairs(folder, spec, make_chunk, progress=False)


def _reference(run_dir: str, n: int) -> dict:
    run = load_run(run_dir)
    s, seeds = run.config.sample, range(SEED, SEED + n)
    steps = 20 if run.data.kind == "image" else s.steps
    x = run.model.generate(n, seeds=seeds, sampler=s.sampler, steps=steps, grid=s.grid,
                           **prior_labels(run.model, run.data, seeds))
    return {"sampler": s.sampler, "steps": steps, **_quality(x, run.data)}


# ------------------------------------------------------------------------------------------------- torchcfm
def _cfm_row(cfg, matcher_name: str, seconds: float, n: int) -> dict | None:
    try:
        from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                        ExactOptimalTransportConditionalFlowMatcher)
    except ImportError:
        return None
    data = build_data(cfg)
    model = build_model(cfg, data)  # the same network, initialised as unidm's run is
    net = model.net
    ema = EMA(net, cfg.train.ema_decay, cfg.train.ema_warmup)  # as unidm's trainer averages
    fm = (ExactOptimalTransportConditionalFlowMatcher if matcher_name == "OT-CFM" else ConditionalFlowMatcher)(sigma=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    g = torch.Generator().manual_seed(0)
    conditional = model.num_classes > 0
    x_all, y_all = data.train.float(), data.train_labels
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(len(x_all), (cfg.train.batch_size,), generator=g)
        x1 = x_all[idx]
        x0 = torch.randn(x1.shape, generator=g)
        if conditional:
            t, xt, ut, _, y1 = fm.guided_sample_location_and_conditional_flow(x0, x1, y1=y_all[idx].long())
            v = net(xt, t, class_labels=y1)
        else:
            t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
            v = net(xt, t)
        loss = (v - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        opt.step()
        steps += 1
        ema.update(net, steps)
    net.load_state_dict(ema.state_dict())
    net.eval()
    seeds = range(SEED, SEED + n)
    cond = prior_labels(model, data, seeds)
    y = cond.get("class_labels")

    def v_liu(x, tau):
        return net(x, tau, class_labels=y) if y is not None else net(x, tau)

    z = model.process.prior_sample((n, *model.data_shape), 1.0, seeds=seeds)
    row = {"train_seconds": time.perf_counter() - t0, "train_steps": steps}
    with torch.no_grad():
        for k in NFES:
            x = z.clone()
            for i in range(k):
                x = x + v_liu(x, torch.full((n,), i / k)) / k
            row[f"nfe{k}"] = _quality(x, data)
        r = ode_straightness(lambda x, t: -v_liu(x, 1 - t), z, steps=64)  # unidm's time: t = 1 - tau
    row.update({"straightness": float(r.straightness.mean()), "transport_cost": float(r.transport_cost.mean())})
    return row


# ---------------------------------------------------------------------------------------------------- driver
def run_dataset(name: str, root: str, args) -> dict:
    preset = f"{name}-flow"
    image = name == "digits"
    base = ["train.progress=false", f"train.num_threads={args.threads}", "train.log_every=100", "sample.n=200",
            "train.ckpt_every=100000", *([] if image else [f"model.hidden={args.hidden}", "train.batch_size=256"])]
    d = lambda row: os.path.join(root, name, row)  # noqa: E731
    cls = "-class" if image else ""
    out: dict = {"preset": preset, "rows": {}}
    t0 = time.perf_counter()

    def once(row: str, *cmd: str) -> None:  # --keep DIR --reuse: a finished run is not trained again
        if row in args.rows and not (args.reuse and os.path.isfile(os.path.join(d(row), "model.safetensors"))):
            _quiet([*cmd, "--out", d(row)])

    once("1-RF", "train", preset, f"train.steps={args.steps}", *base, *args.parent_overrides)
    once("OT", "train", preset, f"train.steps={args.steps}", f"method.coupling=ot{cls}", *base)
    once("SB", "train", preset, f"train.steps={args.steps}", f"method.coupling=sb{cls}",
         f"method.coupling_reg={args.sb_reg}", *base)
    chunk = str(min(args.pairs, 2000))
    pairs = ["--pairs", str(args.pairs), "--chunk-size", chunk, "train.warmup=0", *base]
    levels = [f"method.noise_levels={args.reflow_noise_levels}"] if args.reflow_noise_levels else []
    reflow = [*pairs, f"train.steps={args.reflow_steps}", *levels, *args.reflow_overrides]
    distill = [*pairs, f"train.steps={args.distill_steps or args.reflow_steps}", *args.distill_overrides]
    once("2-RF", "reflow", d("1-RF"), *reflow)
    once("3-RF", "reflow", d("2-RF"), *reflow)
    src = d(args.distill_from)
    shared = ["--pairs-from", d("3-RF")] if "3-RF" in args.rows and args.distill_from == "2-RF" else []
    once("2-RF+D1", "distill", src, "--steps", "1", *shared, *distill)
    if any(r in args.rows for r in EXACT_ROWS):  # the exact parent's coupling (a mixture's oracle)
        _exact_pairs(d("1-RF"), d("exact-pairs-1"), args.pairs, int(chunk))
        once("2-RF*", "reflow", d("1-RF"), "--pairs-from", d("exact-pairs-1"), *reflow)
        if "2-RF*+D1" in args.rows:
            _exact_pairs(d("2-RF*"), d("exact-pairs-2"), args.pairs, int(chunk))
            once("2-RF*+D1", "distill", d("2-RF*"), "--steps", "1", "--pairs-from", d("exact-pairs-2"), *distill)
    out["train_minutes"] = (time.perf_counter() - t0) / 60
    data = load_run(d("1-RF")).data
    gaps = {"1-RF": _pairs_gap(os.path.join(d("2-RF"), "pairs"), data),
            "2-RF": _pairs_gap(os.path.join(d("3-RF"), "pairs"), data) if args.distill_from == "2-RF" else None,
            "exact": _pairs_gap(d("exact-pairs-1"), data)}
    if any(v is not None for v in gaps.values()):
        out["pairs_gap"] = gaps  # each parent at the pairs' adaptive solver
    for row in [r for r in UNIDM_ROWS if r in args.rows]:
        out["rows"][row] = _unidm_row(d(row), args.n_eval)
        print(f"  {name} {row} done", flush=True)
    out["ref"] = _reference(d("1-RF"), args.n_eval)
    cfg = get_preset(preset)
    from unidm.config import apply_overrides

    cfg = apply_overrides(cfg, [f"train.steps={args.steps}", *base, *args.parent_overrides])
    seconds = out["rows"]["1-RF"]["train_seconds"]
    for row in [r for r in ROWS[6:] if r in args.rows]:
        r = _cfm_row(cfg, row, seconds, args.n_eval)
        if r is None:
            out["torchcfm"] = "not installed (pip install --no-deps torchcfm pot)"
            break
        out["rows"][row] = r
    return out


def _fmt_quality(q: dict) -> str:
    if "frechet" in q:
        return f"{q['frechet_ratio']:6.2f}/{q['c2st']:.2f}" if q.get("c2st") is not None else f"{q['frechet_ratio']:6.2f}"
    if "ce_gap" in q:
        return f"{q['ce_gap']:+7.3f}"
    return f"{q['sw2_ratio']:7.2f}"


def print_table(results: dict) -> None:
    for name, res in results.items():
        what = {"digits": "Fréchet / resampled floor, C2ST", "gmm-ring": "cross-entropy gap (nats)"}.get(
            name, "sliced W2 / floor")
        ref = res["ref"]
        print(f"\n{name} ({what}); ref = 1-RF with {ref['sampler']} {ref['steps']} steps: {_fmt_quality(ref)}")
        print(f"{'row':9s} " + " ".join(f"{'NFE ' + str(k):>13s}" for k in NFES)
              + f" {'straightness':>13s} {'transport':>10s} {'train s':>8s}")
        for row, r in res["rows"].items():
            print(f"{row:9s} " + " ".join(f"{_fmt_quality(r[f'nfe{k}']):>13s}" for k in NFES)
                  + f" {r.get('straightness', float('nan')):13.4f} {r.get('transport_cost', float('nan')):10.3f}"
                  f" {r['train_seconds']:8.1f}")
        if "pairs_gap" in res:
            print("pairs' gap (each parent through the adaptive solver): "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in res["pairs_gap"].items() if v is not None))
        if "torchcfm" in res:
            print(f"torchcfm: {res['torchcfm']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="moons only, 300 + 200 steps, 2000 pairs, 1000 samples")
    p.add_argument("--datasets", nargs="+", default=["moons", "gmm-ring", "checkerboard"],
                   help="any of moons, gmm-ring, checkerboard, digits")
    p.add_argument("--steps", type=int, default=1000, help="training steps of 1-RF, OT, SB")
    p.add_argument("--reflow-steps", type=int, default=600, help="training steps of 2-RF, 3-RF and the student")
    p.add_argument("--pairs", type=int, default=6000, help="reflow pairs")
    p.add_argument("--n-eval", type=int, default=2000, help="samples per evaluation")
    p.add_argument("--sb-reg", type=float, default=0.5,
                   help="the SB coupling's entropic regularisation (bridge noise level sqrt(reg / 2)); at the library's "
                        "0.05 its Sinkhorn solve costs ~40x an exact OT step")
    p.add_argument("--reflow-noise-levels", default="uniform-t",
                   help="training times of 2-RF and 3-RF (Liu et al.: uniform); '' keeps the parent's (the flow "
                        "presets' logit-normal, which rarely trains the velocity near t = 1 where a one-step Euler "
                        "reads it)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS + EXACT_ROWS,
                   help="the rows to train and evaluate (1-RF is always needed; 2-RF* and 2-RF*+D1, the exact "
                        "mixture ODE as parent, only on request and only for a mixture)")
    p.add_argument("--hidden", type=int, default=128, help="the toys' MLP width")
    p.add_argument("--parent-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra overrides of 1-RF (and the torchcfm rows), e.g. train.batch_size=512")
    p.add_argument("--reflow-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra overrides of the reflow runs, e.g. train.lr=5e-4")
    p.add_argument("--distill-steps", type=int, help="training steps of the student (default: --reflow-steps)")
    p.add_argument("--distill-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra overrides of the student, e.g. train.ema_decay=0")
    p.add_argument("--distill-from", default="2-RF", choices=("2-RF", "3-RF"),
                   help="the student's teacher (3-RF: on pairs drawn from 3-RF)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", help="keep the runs in this folder (default: a temporary folder, removed)")
    p.add_argument("--reuse", action="store_true", help="with --keep: evaluate the finished runs found there instead "
                                                        "of training them again")
    p.add_argument("--json", help="result file name under benchmarks/results (default: reflow[-quick].json)")
    args = p.parse_args()
    if args.quick:
        args.datasets, args.steps, args.reflow_steps, args.pairs, args.n_eval = ["moons"], 300, 200, 2000, 1000
    torch.set_num_threads(args.threads)
    root = args.keep or tempfile.mkdtemp(prefix="unidm-reflow-")
    results = {}
    t0 = time.perf_counter()
    try:
        for name in args.datasets:
            print(f"{name}: training and evaluating ...", flush=True)
            results[name] = run_dataset(name, root, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    print(f"\ntotal {(time.perf_counter() - t0) / 60:.1f} min")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results",
                        args.json or f"reflow{'-quick' if args.quick else ''}.json")
    with open(path, "w") as f:
        json.dump({"settings": vars(args), "results": results}, f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
