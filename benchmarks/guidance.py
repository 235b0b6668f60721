"""Classifier-free vs classifier guidance on digits: class accuracy and Fréchet distance for w in {0, 1, 2, 4}.

Trains (or reuses) a class-conditional EDM UNet with label dropout (preset ``digits-cond-edm``) and a noise-
conditional classifier (preset ``digits-classifier``), shrunk to a CPU budget, then for each guidance method and
weight ``w`` draws ``n`` samples (classes balanced, seeds fixed, so every row starts from the same noise) and
measures:

- accuracy: the fraction classified as the requested class by the clean digits classifier of
  :mod:`unidm.evaluation.feature_net` (the feature network of the image metrics, trained on the training split);
- Fréchet distance of those features to the held-out split (FID with the data's own feature net), beside the floor
  (the same with real training images);
- precision and recall (Kynkäänniemi et al. 2019): fidelity and diversity separately.

``w = 0`` is the unconditional model (null label) and ``w = 1`` the conditional one (CFG) or the unconditional
model plus the learned classifier's gradient (classifier guidance); see :mod:`unidm.guidance`.

    python benchmarks/guidance.py                   # train if needed, then evaluate
    python benchmarks/guidance.py --phase train     # just the two runs
    python benchmarks/guidance.py --dataset gmm-ring --steps 3000   # the 2-D version (true-density metrics)

Writes ``benchmarks/results/guidance_<dataset>.json`` and ``.png`` (a fidelity-diversity plot).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

#: CPU-sized overrides of the presets (the presets themselves are sized for a longer run)
SMALL = {
    "digits": {
        "model": ["model.channels=16", "model.channel_mult=[1,2]", "model.num_blocks=1",
                  "model.attn_resolutions=[]", "model.mid_attn=false", "model.groups=8", "train.batch_size=64",
                  "train.lr=2e-3"],
        "classifier": ["model.channels=[16,32]", "train.batch_size=64", "train.lr=2e-3"],
    },
    "gmm-ring": {"model": ["model.hidden=128"], "classifier": ["model.hidden=64"]},
}
PRESET = {"digits": ("digits-cond-edm", "digits-classifier"), "gmm-ring": ("gmm-ring-cond", "gmm-ring-classifier")}


def _config(preset: str, overrides: list[str]):
    from unidm.config import apply_overrides
    from unidm.presets import get_preset

    return apply_overrides(get_preset(preset), overrides)


def train_run(preset: str, overrides: list[str], out: str, steps: int) -> str:
    """Train ``preset`` (with ``overrides``) into ``out`` unless a finished run is there."""
    from unidm.run import build_data, build_model
    from unidm.train import train

    weights = os.path.join(out, "model.safetensors")
    if os.path.isfile(weights):
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            done = int((f.metadata() or {}).get("step", -1))
        if done >= steps:
            print(f"reusing {out} (step {done})")
            return out
    cfg = _config(preset, overrides + [f"train.steps={steps}", "train.ckpt_every=500", "train.num_threads=1",
                                       "train.device=cpu"])
    data = build_data(cfg)
    model = build_model(cfg, data)
    t0 = time.perf_counter()
    res = train(model, data, cfg.train, out, config_dict=cfg.to_dict(),
                resume=os.path.isdir(os.path.join(out, "state")))
    print(f"trained {preset} -> {out}: {res.step} steps, loss {res.loss:.4f}, {time.perf_counter() - t0:.0f} s")
    return out


def _image_metrics(samples, labels, data):
    from unidm.evaluation.feature_net import feature_net_for, features
    from unidm.evaluation.image_metrics import frechet_distance, precision_recall

    net = feature_net_for(data)
    x = samples.clamp(-1, 1).float()
    with torch.no_grad():
        acc = float((net(x).argmax(1) == labels).float().mean())
    f_s, f_t = features(net, x), features(net, data.test.float())
    p, r = precision_recall(f_t, f_s)
    return {"accuracy": acc, "frechet": frechet_distance(f_s, f_t), "precision": p, "recall": r}


def _image_floor(data, n: int):
    from unidm.evaluation.feature_net import feature_net_for, features
    from unidm.evaluation.image_metrics import frechet_distance, precision_recall

    net = feature_net_for(data)
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(12345))[:n]
    ref = data.train[idx].float()
    with torch.no_grad():  # the clean classifier's own held-out accuracy: what real images of a class score
        acc = float((net(data.test.float()).argmax(1) == data.test_labels).float().mean())
    f_r, f_t = features(net, ref), features(net, data.test.float())
    p, r = precision_recall(f_t, f_r)
    return {"accuracy": acc, "frechet": frechet_distance(f_r, f_t), "precision": p, "recall": r}


def _vector_metrics(samples, labels, data):
    """gmm-ring: fraction in the requested component, and the cross-entropy under the true conditional density."""
    from unidm.oracles import GaussianOracle

    oracle = data.meta["oracle"]
    x = samples.double()
    acc = float((oracle.responsibilities(x, 0.0).argmax(1) == labels).double().mean())
    ce = torch.stack([-GaussianOracle(oracle.means[k], oracle.variances[k]).log_prob(x[i:i + 1])[0]
                      for i, k in enumerate(labels.tolist())])
    spread = float((x - oracle.means[labels]).norm(dim=1).mean())
    return {"accuracy": acc, "cond_cross_entropy": float(ce.mean()), "mean_dist_to_mean": spread}


def evaluate(model_dir: str, clf_dir: str, weights, n: int, sampler: str, steps: int, out_json: str,
             interval: tuple[float, float] | None = None) -> dict:
    from unidm.commands.guidance import guided_denoiser_for
    from unidm.run import load_run

    run = load_run(model_dir)
    data = run.data
    k = data.num_classes
    labels = torch.arange(n) % k
    image = data.kind == "image"
    rows = []
    methods = [("cfg", 0.0, math.inf), ("classifier", 0.0, math.inf)]
    if interval:
        methods.append(("classifier", *interval))
    for method, lo, hi in methods:
        name = method if (lo, hi) == (0.0, math.inf) else f"{method}[{lo:g},{hi:g}]"
        for w in weights:
            D = guided_denoiser_for(run, method, w, clf_dir, sigma_lo=lo, sigma_hi=hi)
            t0 = time.perf_counter()
            chunks = []
            for start in range(0, n, 250):
                sl = slice(start, min(n, start + 250))
                chunks.append(run.model.generate(sl.stop - sl.start, seeds=range(sl.start, sl.stop), sampler=sampler,
                                                 steps=steps, class_labels=labels[sl], denoiser=D))
            x = torch.cat(chunks)
            dt = time.perf_counter() - t0
            m = _image_metrics(x, labels, data) if image else _vector_metrics(x, labels, data)
            rows.append({"method": name, "w": w, "seconds": dt, **m})
            print(json.dumps(rows[-1]), flush=True)
            if image and w == max(weights):
                _grid(x, labels, os.path.join(RESULTS, f"guidance_{data.name}_{name}_w{w:g}_samples.png"))
    report = {"dataset": data.name, "model": model_dir, "classifier": clf_dir, "n": n, "sampler": sampler,
              "steps": steps, "rows": rows}
    if image:
        report["floor"] = _image_floor(data, n)
    os.makedirs(RESULTS, exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(report, f, indent=2)
    return report


def _grid(x, labels, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(labels.max()) + 1
    per = 8
    fig, axes = plt.subplots(per, k, figsize=(k * 0.8, per * 0.8))
    for c in range(k):
        imgs = x[labels == c][:per]
        for r in range(per):
            ax = axes[r, c]
            ax.axis("off")
            if r < len(imgs):
                ax.imshow(imgs[r, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(report: dict) -> str:
    rows = report["rows"]
    keys = [k for k in rows[0] if k not in ("method", "w", "seconds")] + ["seconds"]
    lines = [f"{report['dataset']}: n={report['n']}, {report['sampler']} {report['steps']} steps",
             f"{'method':18s} {'w':>4s} " + " ".join(f"{k:>18s}" for k in keys)]
    for r in rows:
        lines.append(f"{r['method']:18s} {r['w']:4g} " + " ".join(f"{r[k]:18.4f}" for k in keys))
    if "floor" in report:
        fl = report["floor"]
        lines.append(f"{'real data':18s} {'':>4s} " + " ".join(
            f"{fl[k]:18.4f}" if k in fl else f"{'':>18s}" for k in keys))
    return "\n".join(lines)


def plot(report: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = "frechet" in report["rows"][0]
    xkey, ykey = ("frechet", "accuracy") if image else ("cond_cross_entropy", "accuracy")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for method, color in zip(dict.fromkeys(r["method"] for r in report["rows"]), colors):
        rs = [r for r in report["rows"] if r["method"] == method]
        axes[0].plot([r[xkey] for r in rs], [r[ykey] for r in rs], "o-", color=color, label=method)
        for r in rs:
            axes[0].annotate(f"w={r['w']:g}", (r[xkey], r[ykey]), textcoords="offset points", xytext=(4, 4))
        second = "recall" if image else "mean_dist_to_mean"
        axes[1].plot([r["w"] for r in rs], [r[second] for r in rs], "o-", color=color, label=method)
    if image and "floor" in report:
        axes[0].axvline(report["floor"]["frechet"], color="gray", ls="--", label="real-data floor")
        axes[0].axhline(report["floor"]["accuracy"], color="gray", ls=":")
        axes[1].axhline(report["floor"]["recall"], color="gray", ls="--", label="real data")
    axes[0].set_xlabel("Fréchet distance (feature net), lower is better" if image else
                       "cross-entropy under the true conditional (nats)")
    if not image:
        axes[0].set_xscale("symlog", linthresh=1.0)
    axes[0].set_ylabel("class accuracy of samples")
    axes[0].set_title("fidelity vs distance to the data")
    axes[1].set_xlabel("guidance weight w")
    axes[1].set_ylabel("recall (diversity)" if image else "mean distance to the class mean")
    axes[1].set_title("diversity vs w")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"guidance on {report['dataset']} ({report['sampler']}, {report['steps']} steps, n={report['n']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(PRESET), default="digits")
    p.add_argument("--phase", choices=["all", "train", "train-model", "train-classifier", "eval"], default="all")
    p.add_argument("--steps", type=int, default=2000, help="training steps of the diffusion model")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("-n", type=int, default=500, help="samples per (method, w)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="also classifier guidance with this guidance interval")
    p.add_argument("--classifier-run", help="use this classifier run folder instead of RUNS/<dataset>-classifier")
    p.add_argument("--runs", default=os.path.join(RESULTS, "runs"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    preset_model, preset_clf = PRESET[args.dataset]
    model_dir = os.path.join(args.runs, f"{args.dataset}-cond")
    clf_dir = args.classifier_run or os.path.join(args.runs, f"{args.dataset}-classifier")
    if args.phase in ("all", "train", "train-model"):
        train_run(preset_model, SMALL[args.dataset]["model"], model_dir, args.steps)
    if args.phase in ("all", "train", "train-classifier"):
        train_run(preset_clf, SMALL[args.dataset]["classifier"], clf_dir, args.classifier_steps)
    if args.phase not in ("all", "eval"):
        return 0
    tag = f"_{os.path.basename(os.path.normpath(args.classifier_run))}" if args.classifier_run else ""
    out_json = os.path.join(RESULTS, f"guidance_{args.dataset}{tag}.json")
    report = evaluate(model_dir, clf_dir, args.weights, args.n, args.sampler, args.sample_steps, out_json,
                      tuple(args.interval) if args.interval else None)
    print(table(report))
    print(f"plot: {plot(report, os.path.join(RESULTS, f'guidance_{args.dataset}{tag}.png'))}\njson: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
