"""Toy training benchmark: every Gaussian process on moons, checkerboard and an analytic mixture, same network,
same time budget. Prints a table and writes JSON.

    python benchmarks/train_toy.py [--seconds 120] [--datasets moons checkerboard gmm-ring] [--processes vp ve edm flow]

Reports steps/s, the training time at which sliced W2 (10k samples vs held-out) first falls within 1.5x its noise
floor, and the final metrics (sliced W2, MMD, energy with floors; cross-entropy vs true entropy for the mixture).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


from unidm.config import apply_overrides
from unidm.evaluation.metrics import sliced_wasserstein
from unidm.evaluation.sample_quality import evaluate_samples, reference_set
from unidm.presets import get_preset
from unidm.run import build_data, build_model
from unidm.train import train


def run_one(dataset: str, process: str, seconds: float, eval_every: int, n_eval: int, threads: int) -> dict:
    cfg = apply_overrides(get_preset(f"{dataset}-{process}"),
                          ["train.progress=false", "train.ckpt_every=1000000", f"train.num_threads={threads}",
                           "train.log_every=50"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    test = data.test[:n_eval]
    floor = sum(sliced_wasserstein(reference_set(data, len(test), seed=12345 + i), test) for i in range(3)) / 3
    s = cfg.sample
    state = {"eval_time": 0.0, "reached": None, "curve": []}
    t0 = time.perf_counter()

    def callback(step, m, ema, record):
        if step % eval_every:
            return
        te = time.perf_counter()
        backup = {k: v.clone() for k, v in m.state_dict().items()}
        ema.copy_to(m)
        x = m.generate(len(test), seeds=range(len(test)), sampler=s.sampler, steps=s.steps, grid=s.grid).cpu()
        m.load_state_dict(backup)
        sw = sliced_wasserstein(x, test)
        train_time = te - t0 - state["eval_time"]
        state["curve"].append({"step": step, "train_time": train_time, "sliced_w2": sw})
        if state["reached"] is None and sw <= 1.5 * floor:
            state["reached"] = {"step": step, "train_time": train_time}
        state["eval_time"] += time.perf_counter() - te

    run_dir = tempfile.mkdtemp(prefix=f"bench-{dataset}-{process}-")
    try:
        result = train(model, data, cfg.train, run_dir, config_dict=cfg.to_dict(), callback=callback,
                       max_seconds=seconds, log=lambda *_: None)
        from unidm.run import load_run

        run = load_run(run_dir)
        x = run.model.generate(len(test), seeds=range(len(test)), sampler=s.sampler, steps=s.steps, grid=s.grid)
        final = evaluate_samples(x.cpu(), data)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    train_time = result.wall_time - state["eval_time"]
    return {"dataset": dataset, "process": process, "steps": result.step, "train_seconds": train_time,
            "steps_per_sec": result.step / train_time, "sliced_w2_floor": floor, "reached_1.5x_floor": state["reached"],
            "final": final, "curve": state["curve"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--datasets", nargs="+", default=["moons", "checkerboard", "gmm-ring"])
    ap.add_argument("--processes", nargs="+", default=["vp", "ve", "edm", "flow"])
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--n-eval", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/train_toy.json")
    args = ap.parse_args()
    rows = []
    for d in args.datasets:
        for p in args.processes:
            r = run_one(d, p, args.seconds, args.eval_every, args.n_eval, args.threads)
            rows.append(r)
            m = r["final"]["metrics"]
            reached = r["reached_1.5x_floor"]
            ce = r["final"].get("cross_entropy")
            when = f"1.5x floor at {reached['train_time']:.0f}s" if reached else "1.5x floor not reached"
            gap = f"  CE gap {ce['gap']:+.4f} nats" if ce else ""
            sw = m["sliced_w2"]
            print(f"{d:13s} {p:5s} {r['steps']:6d} steps {r['steps_per_sec']:6.1f}/s  SW2 {sw['value']:.4f} "
                  f"(floor {sw['floor']:.4f}, x{sw['ratio']:.2f})  MMD x{m['mmd']['ratio']:.2f}  "
                  f"energy x{m['energy']['ratio']:.2f}  {when}{gap}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"seconds": args.seconds, "threads": args.threads, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
