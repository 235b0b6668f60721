"""Discrete diffusion on binarized digits and pydoc text: masked vs uniform replacement at the same network and
training budget (bits per token), and sample quality vs sampling steps.

    python benchmarks/discrete.py [--quick] [--digits-steps 800] [--text-steps 400] [--threads 1]
                                  [--families masked,uniform,uniform-plain] [--data digits,text]

For each data set it trains ``digits-masked`` / ``binary-digits-uniform`` (the same ``token-mlp``) and
``text-masked`` / ``text-uniform`` (the same small Transformer) for the same number of optimizer steps
(``uniform-plain``: the uniform presets with D3PM's plain logits, ``method.likelihood_skip=false``), then
reports

- the ELBO bound on held-out data in bits per token (masked: MD4's continuous-time bound, stratified over the
  masking level; uniform: D3PM's discrete-time bound over its T = 1000 steps, stratified over the steps) beside
  the unigram baseline;
- samples at several step counts: for masked diffusion the ancestral and the greedy-confidence samplers (with the
  network evaluations the cache saves), for uniform diffusion the ancestral sampler; quality with a floor from real
  data: the pixel-space Fréchet distance to held-out digits, and for text the bits per character under a 4-gram
  model fitted on the held-out text.

``--quick`` trains briefly (a smoke run of about two minutes; its numbers are not the comparison). A table goes to
stdout, everything to ``benchmarks/results/discrete.json`` (``discrete-quick.json``) and sample pictures to
``benchmarks/results/discrete-<data>-<family>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch

from unidm.config import apply_overrides
from unidm.data.discrete import decode
from unidm.evaluation.token_metrics import CharNGram, evaluate_tokens, plot_tokens
from unidm.presets import get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import train

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = {"digits": {"masked": "digits-masked", "uniform": "binary-digits-uniform",
                      "uniform-plain": "binary-digits-uniform"},
           "text": {"masked": "text-masked", "uniform": "text-uniform", "uniform-plain": "text-uniform"}}
#: variants: ``uniform-plain`` is D3PM's plain x0 logits (no closed-form likelihood term added)
VARIANTS = {"uniform-plain": ["method.likelihood_skip=false"]}
FAMILIES = ("masked", "uniform", "uniform-plain")
#: the text models are shrunk alike so that a CPU run trains them for a few hundred steps
TEXT_SIZE = ["model.width=96", "model.depth=2"]


def _train(name: str, overrides: list[str], out: str):
    cfg = apply_overrides(get_preset(name), overrides + ["train.progress=false"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train(model, data, cfg.train, out, config_dict=cfg.to_dict(), log=lambda s: None)
    run = load_run(out)
    return run.model, data, {"preset": name, "family": cfg.family, "overrides": overrides, "steps": result.step,
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


def _settings(family: str, kind: str, quick: bool) -> list[tuple[str, int]]:
    if family == "masked":
        steps = {"digits": (4, 16, 64) if quick else (2, 4, 8, 16, 64, 256), "text": (32,) if quick else (8, 32, 128)}
        greedy = {"digits": (16,) if quick else (4, 16, 64), "text": () if quick else (32,)}
        return [("ancestral", k) for k in steps[kind]] + [("greedy", k) for k in greedy[kind]]
    steps = {"digits": (16, 64) if quick else (16, 64, 256), "text": (64,) if quick else (32, 128)}
    return [("ancestral", k) for k in steps[kind]]


def _one(kind: str, family: str, args, out_dir: str) -> dict:
    quick = args.quick
    if kind == "digits":
        overrides = [f"train.steps={args.digits_steps}"]
    else:
        overrides = TEXT_SIZE + [f"train.steps={args.text_steps}"]
    overrides = overrides + VARIANTS.get(family, [])
    model, data, info = _train(PRESETS[kind][family], overrides, os.path.join(out_dir, "runs", f"{kind}-{family}"))
    test = data.test if kind == "digits" else data.test[: args.text_eval]
    t0 = time.perf_counter()
    info["bits_per_token"] = model.bits_per_token(test, n_t=32 if kind == "digits" else 8)
    info["bound_seconds"] = time.perf_counter() - t0
    info["held_out"] = len(test)
    info["unigram_bits"] = _unigram_bits(data)
    n = len(data.test) if kind == "digits" else args.text_samples
    info["samples"] = _sweep(model, data, n, _settings(family, kind, quick))
    best = max(k for s, k in _settings(family, kind, quick) if s == "ancestral")
    n_pic = 64 if kind == "digits" else 12
    x = model.sample(n_pic, seeds=range(n_pic), steps=best).x
    suffix = "-quick" if quick else ""
    info["picture"] = plot_tokens(x, data, os.path.join(out_dir, f"discrete-{kind}-{family}{suffix}.png"),
                                  title=f"{info['preset']}: {info['steps']} training steps, ancestral {best} steps")
    if kind == "text":
        info["example"] = decode(x[:4], data.meta["itos"])
        lm = CharNGram(4, data.vocab_size).fit(data.test)
        info["ngram4_bits_on_train_windows"] = lm.bits_per_token(data.train[:256])
    return info


def _print_kind(kind: str, infos: dict) -> None:
    unit = "bits/token" if kind == "digits" else "bits/char"
    print(f"\n{'binary digits' if kind == 'digits' else 'pydoc text'}: held-out ELBO bound, {unit} "
          f"(unigram baseline {next(iter(infos.values()))['unigram_bits']:.4f})")
    print(f"{'family':13s} {'preset':22s} {'params':>8s} {'steps':>6s} {'train s':>8s} {unit:>10s}")
    for fam, info in infos.items():
        print(f"{fam:13s} {info['preset']:22s} {info['parameters']:8d} {info['steps']:6d} "
              f"{info['train_seconds']:8.0f} {info['bits_per_token']:10.4f}")
    metric = "frechet_pixels" if kind == "digits" else "ngram4_bits"
    print(f"{'family':13s} {'sampler':10s} {'steps':>6s} {'NFE':>5s} {'evals/seq':>9s} {metric:>14s} {'floor':>8s} "
          f"{'sec':>6s}")
    for fam, info in infos.items():
        for r in info["samples"]:
            m = r["metrics"][metric]
            print(f"{fam:13s} {r['sampler']:10s} {r['steps']:6d} {r['nfe']:5d} {r['evals_per_sample']:9.1f} "
                  f"{m['value']:14.3f} {m['floor']:8.3f} {r['seconds']:6.1f}")
        for s in info.get("example", []):
            print(f"  {fam:13s}|" + s.replace("\n", "¶") + "|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run (digits 200 steps, text 60)")
    p.add_argument("--digits-steps", type=int, default=None, help="training steps on digits (default 800)")
    p.add_argument("--text-steps", type=int, default=None, help="training steps on text (default 400)")
    p.add_argument("--text-samples", type=int, default=None, help="text samples per setting (default 128)")
    p.add_argument("--text-eval", type=int, default=256, help="held-out text windows for the bound")
    p.add_argument("--families", default="masked,uniform",
                   help=f"comma-separated: {', '.join(FAMILIES)} (uniform-plain: without the likelihood skip)")
    p.add_argument("--data", default="digits,text", help="comma-separated: digits, text")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    args.digits_steps = args.digits_steps or (200 if args.quick else 800)
    args.text_steps = args.text_steps or (60 if args.quick else 400)
    args.text_samples = args.text_samples or (32 if args.quick else 128)
    families = [f for f in args.families.split(",") if f]
    kinds = [k for k in args.data.split(",") if k]
    for f in families:
        if f not in FAMILIES:
            p.error(f"unknown family {f!r}; valid: {', '.join(FAMILIES)}")
    for k in kinds:
        if k not in PRESETS:
            p.error(f"unknown data {k!r}; valid: {', '.join(PRESETS)}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results: dict = {"torch": torch.__version__, "threads": args.threads, "quick": args.quick}
    for kind in kinds:
        results[kind] = {fam: _one(kind, fam, args, args.out) for fam in families}
        _print_kind(kind, results[kind])
    path = os.path.join(args.out, "discrete-quick.json" if args.quick else "discrete.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
