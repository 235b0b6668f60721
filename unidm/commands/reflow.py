"""``unidm reflow`` and ``unidm distill``: straighten a flow on its own coupling, or distil it to k Euler steps.

    unidm reflow PARENT --out RUN [--pairs N] [--solver adaptive|heun --steps K] [--seed S] [--pairs-only]
                 [--pairs-from DIR] [--device DEV] [key=value ...]
    unidm distill PARENT --out RUN --steps k [--pairs N] [--feature-weight W] [key=value ...]

Both draw the parent's coupling ``(z, x1[, y])`` into ``RUN/pairs`` (:mod:`unidm.pairs`; rerunning the same command
finishes a killed generation, bitwise the same pairs) and then train on it with the run's ordinary trainer:

* **reflow** (Liu et al. 2022, "Flow Straight and Fast", Algorithm 1): the parent's family, network and method on the
  fixed pairs (``data.name=pairs``: batch ``"noise"`` is ``z``), initialised from the parent's weights. A reflow of a
  reflow run is the 3-rectified flow.
* **distill** (ibid., Sec. 2.3): family ``distill``, a student that maps ``z`` to ``x1`` in k Euler steps, with the
  parent as its frozen teacher (whose weights initialise it); sample it with ``unidm sample RUN --steps k``.

The parent's folder, weights digest and the pairs' settings are recorded in the new run's ``config.json``
(``data.parent``, ``data.digest``) and ``pairs/pairs.json``; nothing is written into the parent's folder. Rerunning
the same command resumes: unfinished pairs are finished, a run with checkpoints continues from the newest (as
``unidm train --resume``, also under ``torchrun``).
"""

from __future__ import annotations

import os
import shutil
import time

__all__ = ["add_arguments", "add_distill_arguments", "run", "run_distill"]


def _common(sp, positive_int, seed_int, device_name) -> None:
    sp.add_argument("parent", help="the run folder of a trained diffusion / flow run (never written to)")
    sp.add_argument("items", nargs="*", metavar="key=value", help="config overrides of the new run, e.g. "
                                                                   "train.steps=2000")
    sp.add_argument("--out", required=True, help="the new run folder (new or empty; the same folder again resumes)")
    sp.add_argument("--pairs", type=positive_int, default=10_000, help="number of pairs (z, x1) to draw")
    sp.add_argument("--solver", default="adaptive", help="ODE solver of the pairs: adaptive (Dormand-Prince), heun, "
                                                         "euler or dpmpp_2m")
    sp.add_argument("--seed", type=seed_int, default=0, help="pair i draws its noise from seed SEED + i")
    sp.add_argument("--chunk-size", type=positive_int, default=1000, help="pairs per stored chunk (a killed run "
                                                                          "resumes at chunk granularity)")
    sp.add_argument("--rtol", type=float, default=1e-5, help="adaptive solver's relative tolerance")
    sp.add_argument("--atol", type=float, default=1e-5, help="adaptive solver's absolute tolerance")
    sp.add_argument("--pairs-from", metavar="DIR", help="reuse the finished pairs of another run folder (or pairs "
                                                        "folder) drawn from the same parent weights")
    sp.add_argument("--pairs-only", action="store_true", help="stop after the pairs are drawn")
    sp.add_argument("--device", type=device_name, help="cpu, cuda, cuda:N, mps or auto (default: the parent's "
                                                       "train.device)")


def add_arguments(sp, positive_int, seed_int, device_name) -> None:
    """``unidm reflow``'s arguments."""
    _common(sp, positive_int, seed_int, device_name)
    sp.add_argument("--steps", type=positive_int, help="steps of a fixed-step --solver (default 32)")


def add_distill_arguments(sp, positive_int, seed_int, device_name) -> None:
    """``unidm distill``'s arguments."""
    _common(sp, positive_int, seed_int, device_name)
    sp.add_argument("--steps", type=positive_int, default=1, help="the student's Euler steps k")
    sp.add_argument("--solver-steps", type=positive_int, help="steps of a fixed-step --solver (default 32)")
    sp.add_argument("--feature-weight", type=float, default=0.0,
                    help="images: weight of the distance in the feature net's features (the offline stand-in for "
                         "LPIPS) added to the L2 loss")


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _child_config(parent, folder: str, digest: str, overrides: list[str], family: str | None = None,
                  method: dict | None = None, sample: dict | None = None, suffix: str = "reflow"):
    """The new run's config: the parent's, on ``data.name=pairs`` over the parent's real data, independent
    coupling (the pairs are the coupling), the parent's folder and weights digest recorded, then ``overrides``."""
    from ..config import RunConfig, apply_overrides

    d = parent.config.to_dict()
    base = d["data"]["base"] if d["data"].get("name") == "pairs" else d["data"]
    d["data"] = {"name": "pairs", "path": os.path.abspath(folder), "base": base, "digest": digest,
                 "parent": os.path.abspath(parent.path)}
    d["data_info"] = {}
    m = d["method"]
    if m.get("coupling", "independent") != "independent":
        m["coupling"] = "independent"
        m.pop("coupling_reg", None)
    m["fixed_pairs"] = True
    if "noise_levels" in (method or {}):  # the parent's options belong to the parent's time law
        m.pop("noise_options", None)
    m.update(method or {})
    if family:
        d["family"] = family
    if sample:
        d["sample"].update(sample)
    d["name"] = f"{d.get('name') or 'run'}-{suffix}"
    return apply_overrides(RunConfig.from_dict(d), overrides)


def _copy_pairs(source: str, folder: str, digest: str) -> None:
    """Copy the finished pairs of ``source`` (a run folder or a pairs folder) into ``folder``, refusing pairs
    drawn from other weights."""
    from ..data.pairs import MANIFEST, chunk_name, num_chunks, read_manifest, read_pairs

    src = os.path.join(source, "pairs") if os.path.isdir(os.path.join(source, "pairs")) else source
    read_pairs(src, digest)  # refuses another parent's pairs, or unfinished ones
    manifest = read_manifest(src)
    os.makedirs(folder, exist_ok=True)
    for name in [MANIFEST] + [chunk_name(i) for i in range(num_chunks(manifest))]:
        if not os.path.exists(os.path.join(folder, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(folder, name + ".copy"))
            os.replace(os.path.join(folder, name + ".copy"), os.path.join(folder, name))


def _draw_pairs(args, parent, out: str, dist, solver_steps: int | None) -> dict:
    from ..data.pairs import read_manifest
    from ..pairs import pairs_for_run, weights_digest

    folder = os.path.join(out, "pairs")
    if dist.is_main:
        os.makedirs(os.path.join(out, "state"), exist_ok=True)  # a unidm run folder from here on
        if args.pairs_from:
            _copy_pairs(args.pairs_from, folder, weights_digest(parent.model))
    dist.barrier()
    n, chunk, seed = args.pairs, args.chunk_size, args.seed
    if args.pairs_from:  # the copied pairs' own settings
        m = read_manifest(folder)
        n, chunk, seed, args.solver, solver_steps = m["n"], m["chunk_size"], m["seed"], m["solver"], m["steps"]
        args.rtol, args.atol = m["rtol"], m["atol"]
    info = pairs_for_run(parent, folder, n, seed=seed, solver=args.solver, steps=solver_steps, chunk_size=chunk,
                         rtol=args.rtol, atol=args.atol, rank=dist.rank, world=dist.world_size,
                         progress=dist.is_main)
    dist.barrier()
    return info


def _train_child(cfg, out: str, parent, init_from_parent: bool, feature_weight: float) -> int:
    from ..config import check_resume, validate_config
    from ..evaluation.plots import plot_samples
    from ..run import build_data, build_model, data_info, load_run, load_weights
    from ..train import train
    from ..train.checkpoint import latest_checkpoint
    from . import guidance

    validate_config(cfg)
    data = build_data(cfg)
    cfg.data_info = data_info(data)
    model = build_model(cfg, data)
    plan = model.check_sampling(cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid)
    cfg.sample.sampler, cfg.sample.steps, cfg.sample.grid = plan.sampler, plan.steps, plan.grid
    ck = latest_checkpoint(out, warn=lambda _: None)
    resume = ck is not None
    if resume:
        from ..config import RunConfig

        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            stored = RunConfig.from_json(f.read(), source=os.path.join(out, "config.json"))
        for line in check_resume(stored, cfg, ck.step):
            print(f"resume: {line}")
    elif init_from_parent:
        load_weights(model, parent.model.state_dict(), parent.path, f"the model of {out}")
    if feature_weight > 0:
        from ..evaluation.feature_net import feature_net_for

        model.add_frozen("features", feature_net_for(data))
    if _rank0():
        print(f"{cfg.name}: {len(data.train_tensors()['x'])} pairs, {cfg.train.steps} steps -> {out}")
    result = train(model, data, cfg.train, out, resume=resume, config_dict=cfg.to_dict())
    if not _rank0():
        return 0
    print(f"trained {result.step} steps in {result.wall_time:.1f} s, final loss {result.loss:.4f}")
    run = load_run(out, device=model.device)
    s = cfg.sample
    seeds = range(s.seed, s.seed + min(s.n, 2000 if data.kind == "vector" else 64))
    x = run.model.generate(len(seeds), seeds=seeds, sampler=s.sampler, steps=s.steps, grid=s.grid,
                           **guidance.prior_labels(run.model, run.data, seeds))
    print(f"samples: {plot_samples(x.cpu(), data, os.path.join(out, 'samples.png'), title=f'{cfg.name}: {s.sampler}, {s.steps} steps')}")
    return 0


def _check_values(args, cfg, parent, feature_weight: float) -> None:
    """The flags, the new run's config, and that it builds a model (on the parent's data, before the pairs exist)."""
    import math

    from ..config import RunConfig, validate_config
    from ..pairs import SOLVERS
    from ..run import build_model

    if args.solver not in SOLVERS:
        raise ValueError(f"unknown --solver {args.solver!r}; valid: {', '.join(SOLVERS)}")
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a finite number > 0, got {value!r}")
    if not (math.isfinite(feature_weight) and feature_weight >= 0):
        raise ValueError(f"--feature-weight must be a finite number >= 0, got {feature_weight!r}")
    validate_config(cfg)
    probe = RunConfig.from_dict({**cfg.to_dict(), "data": cfg.data["base"]})
    build_model(probe, parent.data)  # unknown or bad model / method keys are refused here


def _run(args, family: str | None, suffix: str, solver_steps: int | None, method: dict | None = None,
         sample: dict | None = None, init_from_parent: bool = True, feature_weight: float = 0.0) -> int:
    from ..pairs import check_parent, weights_digest
    from ..run import load_run
    from ..train import DistInfo
    from ..train.runfolder import check_run_folder

    what = "reflow" if family is None else "distillation"
    if os.path.abspath(args.out) == os.path.abspath(args.parent):
        raise ValueError("--out is the parent run's folder; the parent is never written to, pick a new folder")
    check_run_folder(args.out, resume=False)
    parent = load_run(args.parent, device=args.device or "cpu")
    check_parent(parent.model, args.parent, what)
    digest = weights_digest(parent.model)
    cfg = _child_config(parent, os.path.join(args.out, "pairs"), digest, list(args.items), family, method, sample,
                        suffix)
    if args.device:
        cfg.train.device = args.device
    _check_values(args, cfg, parent, feature_weight)  # every value, before anything is written
    dist = DistInfo.from_env(cfg.train.device)
    t0 = time.perf_counter()
    info = _draw_pairs(args, parent, args.out, dist, solver_steps)
    if dist.is_main:
        s = info["spec"]
        print(f"pairs: {info['done']} of {info['chunks']} chunks ({s['n']} pairs, {s['solver']}"
              f"{'' if s['steps'] is None else ' ' + str(s['steps']) + ' steps'}; {info['new']} drawn now in "
              f"{time.perf_counter() - t0:.1f} s) -> {os.path.join(args.out, 'pairs')}")
    if args.pairs_only:
        dist.close()
        return 0
    code = _train_child(cfg, args.out, parent, init_from_parent, feature_weight)
    dist.close()
    return code


#: reflow trains on t ~ U(0, 1) as Liu et al. (2022) do, whatever time law the parent used: a one- or two-step Euler
#: reads the velocity near t_max, which a logit-normal law rarely visits (docs/rectified_flow.md); an override wins
REFLOW_METHOD = {"noise_levels": "uniform-t"}


def run(args) -> int:
    """``unidm reflow``."""
    return _run(args, None, "reflow", args.steps, dict(REFLOW_METHOD))


def run_distill(args) -> int:
    """``unidm distill``."""
    k = args.steps
    method = {"teacher": os.path.abspath(args.parent), "steps": k}
    if args.feature_weight:
        method["feature_weight"] = args.feature_weight
    sample = {"sampler": "euler", "steps": k, "grid": "uniform-t"}
    return _run(args, "distill", f"distill{k}", args.solver_steps, method, sample, init_from_parent=False,
                feature_weight=args.feature_weight)

