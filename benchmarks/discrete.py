"""Masked diffusion on binarized digits and pydoc text: bits per token and sample quality vs sampling steps.

    python benchmarks/discrete.py [--digits-steps 800] [--text-seconds 240] [--threads 1]

Trains the ``digits-masked`` and ``text-masked`` presets briefly (sized for a shared CPU), then reports

- the ELBO bound on held-out data in bits per token (MD4 eq. 4, stratified over the masking level);
- samples from the ancestral and the greedy-confidence samplers at several step counts: the network evaluations
  each needed (with the cache), and their quality with a floor from real data: the pixel-space Fréchet distance to
  held-out digits; for text the bits per character under a 4-gram model fitted on the held-out text.

A table goes to stdout and everything to ``benchmarks/results/discrete.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch

from unidm.config import apply_overrides
from unidm.evaluation.token_metrics import CharNGram, evaluate_tokens
from unidm.presets import get_preset
from unidm.run import build_data, build_model
from unidm.train import train

HERE = os.path.dirname(os.path.abspath(__file__))


def _train(name: str, overrides: list[str], out: str, max_seconds: float | None):
    cfg = apply_overrides(get_preset(name), overrides + ["train.progress=false"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(model, data, cfg.train, out, config_dict=cfg.to_dict(), max_seconds=max_seconds, log=lambda s: None)
    from unidm.run import load_run

    run = load_run(out)
    return run.model, data, {"preset": name, "overrides": overrides, "steps": result.step,
                             "train_seconds": time.perf_counter() - t0, "final_loss": result.loss,
                             "parameters": sum(p.numel() for p in model.parameters())}


def _unigram_bits(data) -> float:
    """Held-out cross-entropy of the training split's symbol frequencies (add-one): a no-context baseline."""
    f = torch.bincount(data.train.flatten(), minlength=data.vocab_size).double() + 1
    logp = (f / f.sum()).log2()
    return float(-logp[data.test.flatten()].mean())


def _sweep(model, data, n: int, settings: list[tuple[str, int]]) -> list[dict]:
    rows = []
    for sampler, steps in settings:
        t0 = time.perf_counter()
        out = model.sample(n, seeds=range(n), sampler=sampler, steps=steps)
        dt = time.perf_counter() - t0
        report = evaluate_tokens(out.x, data)
        rows.append({"sampler": sampler, "steps": steps, "nfe": out.nfe, "evals_per_sample": out.evals_per_sample,
                     "seconds": dt, "metrics": report["metrics"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--digits-steps", type=int, default=800)
    p.add_argument("--text-seconds", type=float, default=240.0)
    p.add_argument("--text-samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results: dict = {"torch": torch.__version__, "threads": args.threads}

    # ---- binarized digits
    model, data, info = _train("digits-masked", [f"train.steps={args.digits_steps}"],
                               os.path.join(args.out, "runs", "digits-masked"), None)
    info["bits_per_token"] = model.bits_per_token(data.test, n_t=32)
    info["unigram_bits"] = _unigram_bits(data)
    settings = [("ancestral", k) for k in (2, 4, 8, 16, 64, 256)] + [("greedy", k) for k in (4, 16, 64)]
    info["samples"] = _sweep(model, data, len(data.test), settings)
    results["digits"] = info
    print(f"\nbinary digits: {info['steps']} steps ({info['train_seconds']:.0f} s), {info['parameters']} params; "
          f"held-out bound {info['bits_per_token']:.4f} bits/token (unigram {info['unigram_bits']:.4f})")
    print(f"{'sampler':10s} {'steps':>6s} {'NFE':>5s} {'evals/seq':>9s} {'Frechet':>9s} {'floor':>8s} {'ratio':>6s}")
    for r in info["samples"]:
        m = r["metrics"]["frechet_pixels"]
        print(f"{r['sampler']:10s} {r['steps']:6d} {r['nfe']:5d} {r['evals_per_sample']:9.1f} {m['value']:9.3f} "
              f"{m['floor']:8.3f} {m['ratio']:6.2f}")

    # ---- text
    model, data, info = _train("text-masked", ["model.width=96", "model.depth=2", "train.steps=3000"],
                               os.path.join(args.out, "runs", "text-masked"), args.text_seconds)
    test = data.test[:256]
    info["bits_per_token"] = model.bits_per_token(test, n_t=8)
    info["unigram_bits"] = _unigram_bits(data)
    lm = CharNGram(4, data.vocab_size).fit(data.test)
    info["ngram4_bits_on_train_windows"] = lm.bits_per_token(data.train[:256])
    settings = [("ancestral", k) for k in (8, 32, 128)] + [("greedy", k) for k in (32,)]
    info["samples"] = _sweep(model, data, args.text_samples, settings)
    from unidm.data.discrete import decode

    best = model.sample(4, seeds=range(4), steps=128).x
    info["example"] = decode(best, data.meta["itos"])
    results["text"] = info
    print(f"\npydoc text: {info['steps']} steps ({info['train_seconds']:.0f} s), {info['parameters']} params; "
          f"held-out bound {info['bits_per_token']:.4f} bits/char (unigram {info['unigram_bits']:.4f})")
    print(f"{'sampler':10s} {'steps':>6s} {'NFE':>5s} {'evals/seq':>9s} {'4-gram bits':>11s} {'real':>8s}")
    for r in info["samples"]:
        m = r["metrics"]["ngram4_bits"]
        print(f"{r['sampler']:10s} {r['steps']:6d} {r['nfe']:5d} {r['evals_per_sample']:9.1f} {m['value']:11.3f} "
              f"{m['floor']:8.3f}")
    for s in info["example"]:
        print("  |" + s.replace("\n", "¶") + "|")
    path = os.path.join(args.out, "discrete.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
