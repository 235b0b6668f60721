"""Deletion diffusion on the words of the pydoc corpus: sample quality of the baseline and the nested reverse samplers
against held-out words, vs the number of sampling steps; masked diffusion on the same text for scale.

    python benchmarks/deletion.py [--quick] [--train-steps 1500] [--masked-steps 1000] [--n 500] [--threads 1]
                                  [--run RUN_DIR]

It trains ``text-deletion`` (or reads the run folder ``--run``), then draws ``--n`` words with each sampler at
several step counts and compares them with held-out words (:mod:`unidm.evaluation.sequence_metrics`): total variation
of character bigram and trigram frequencies (each word framed by start and end marks), of the length distribution,
and the fraction of generated words that are not in the training vocabulary; every statistic beside its floor, the
same statistic for as many real training words. It also trains ``text-masked`` (fixed 64-character windows) and
reports the n-gram statistics of its windows against held-out windows and the fraction of its whole words (the inner
ones of each window) not in the training vocabulary: a different unit of text, for scale only.

``--quick`` is a smoke run (a few hundred training steps; its numbers are not the comparison). A table goes to
stdout, everything to ``benchmarks/results/deletion.json`` (``deletion-quick.json``), and sample words to
``benchmarks/results/deletion-<sampler>-<steps>.txt`` (``...-quick.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter

import torch

from unidm.config import apply_overrides
from unidm.data.discrete import decode
from unidm.data.sequences import decode_sequences
from unidm.evaluation.sequence_metrics import evaluate_sequences, oov_fraction, total_variation
from unidm.presets import get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import train

HERE = os.path.dirname(os.path.abspath(__file__))


def _train(name: str, overrides: list[str], out: str) -> tuple:
    cfg = apply_overrides(get_preset(name), overrides + ["train.progress=false"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(model, data, cfg.train, out, config_dict=cfg.to_dict(), log=lambda s: None)
    info = {"preset": name, "overrides": overrides, "steps": result.step, "train_seconds": time.perf_counter() - t0,
            "final_loss": result.loss, "parameters": sum(p.numel() for p in model.parameters())}
    return load_run(out), info


def _deletion(args, out_dir: str) -> dict:
    if args.run:
        run, info = load_run(args.run), {"run": args.run}
    else:
        run, info = _train("text-deletion", [f"train.steps={args.train_steps}", f"train.num_threads={args.threads}"],
                           os.path.join(out_dir, "deletion-run-quick" if args.quick else "deletion-run"))
    rows = []
    for steps in args.sampling_steps:
        for sampler in ("baseline", "nested"):
            t0 = time.perf_counter()
            x = torch.cat([run.model.generate(len(c), seeds=c, sampler=sampler, steps=steps).cpu()
                           for c in (range(a, min(a + 500, args.n)) for a in range(0, args.n, 500))])
            seconds = time.perf_counter() - t0
            report = evaluate_sequences(x, run.data)
            words = decode_sequences(x, run.data.meta["itos"])
            tag = "-quick" if args.quick else ""
            with open(os.path.join(out_dir, f"deletion-{sampler}-{steps}{tag}.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(words) + "\n")
            rows.append({"sampler": sampler, "steps": steps, "seconds": seconds, "examples": words[:12],
                         "full_length": float(sum(len(w) == run.model.max_len for w in words) / len(words)),
                         **report})
    return {"train": info, "rows": rows}


def _window_stats(windows: list[str], test: list[str], vocabulary: set[str]) -> dict:
    def grams(texts, n):
        return Counter(s[i:i + n] for s in texts for i in range(len(s) - n + 1))

    inner = [" ".join(s.split()[1:-1]) for s in windows]  # a window's first and last words may be cut
    return {"bigram_tv": total_variation(grams(windows, 2), grams(test, 2)),
            "trigram_tv": total_variation(grams(windows, 3), grams(test, 3)),
            "oov_words": oov_fraction(inner, vocabulary)}


def _masked(args, out_dir: str) -> dict:
    run, info = _train("text-masked", [f"train.steps={args.masked_steps}", f"train.num_threads={args.threads}",
                                       "model.width=96", "model.depth=2"],
                       os.path.join(out_dir, "masked-run-quick" if args.quick else "masked-run"))
    itos = run.data.meta["itos"]
    n = min(args.n // 4, len(run.data.test))  # a window holds about ten words
    t0 = time.perf_counter()
    x = run.model.generate(n, seeds=range(n), sampler="ancestral", steps=64).cpu()
    seconds = time.perf_counter() - t0
    windows, test = decode(x, itos), decode(run.data.test[:n], itos)
    train_text = decode(run.data.train[::4], itos)  # stride 16, windows of 64: every 4th tiles the training text
    vocabulary = {w for s in train_text for w in s.split()}
    ref = decode(run.data.train[torch.randperm(len(run.data.train), generator=torch.Generator().manual_seed(0))[:n]],
                 itos)
    values, floors = _window_stats(windows, test, vocabulary), _window_stats(ref, test, vocabulary)
    floors["oov_words"] = oov_fraction([" ".join(s.split()[1:-1]) for s in test], vocabulary)
    return {"train": info, "n": n, "seconds": seconds, "examples": windows[:6],
            "metrics": {k: {"value": values[k], "floor": floors[k], "ratio": values[k] / max(floors[k], 1e-12)}
                        for k in values}}


def _print(results: dict) -> None:
    d = results["deletion"]
    print(f"deletion diffusion, text-deletion: {d['train']}")
    names = ["bigram_tv", "trigram_tv", "length_tv", "oov_words"]
    print(f"{'sampler':9s} {'steps':>5s} " + " ".join(f"{k:>17s}" for k in names) + f" {'16-char':>8s} {'s':>6s}")
    floors = d["rows"][0]["metrics"]
    print(f"{'(floor)':9s} {'':>5s} " + " ".join(f"{floors[k]['floor']:17.3f}" for k in names))
    for r in d["rows"]:
        cells = " ".join(f"{r['metrics'][k]['value']:8.3f} ({r['metrics'][k]['ratio']:5.1f}x)" for k in names)
        print(f"{r['sampler']:9s} {r['steps']:5d} {cells} {r['full_length']:8.2f} {r['seconds']:6.1f}")
    for r in d["rows"]:
        print(f"  {r['sampler']} {r['steps']}: {' '.join(r['examples'])}")
    if "masked" in results:
        m = results["masked"]
        print(f"masked diffusion, text-masked windows (n={m['n']}, ancestral 64 steps, {m['seconds']:.1f} s): "
              + ", ".join(f"{k} {v['value']:.3f} (floor {v['floor']:.3f}, {v['ratio']:.1f}x)"
                          for k, v in m["metrics"].items()))
        for s in m["examples"][:3]:
            print(f"  {s!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: short training, few samples")
    p.add_argument("--train-steps", type=int, default=1500, help="training steps of text-deletion")
    p.add_argument("--masked-steps", type=int, default=1000, help="training steps of text-masked (width 96, depth 2)")
    p.add_argument("--n", type=int, default=500, help="samples per sampler and step count")
    p.add_argument("--sampling-steps", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--run", help="a trained text-deletion run folder to evaluate instead of training one")
    p.add_argument("--no-masked", action="store_true", help="skip the masked-diffusion reference")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    if args.quick:
        args.train_steps, args.masked_steps, args.n, args.sampling_steps = 300, 200, 200, [4, 16]
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    results: dict = {"torch": torch.__version__, "threads": args.threads, "quick": args.quick,
                     "deletion": _deletion(args, args.out)}
    if not args.no_masked:
        results["masked"] = _masked(args, args.out)
    results["seconds"] = time.perf_counter() - t0
    _print(results)
    path = os.path.join(args.out, "deletion-quick.json" if args.quick else "deletion.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
    print(f"-> {path} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
