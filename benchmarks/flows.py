"""unidm's flows against zuko's and normflows' same architectures on 2-D data, at about the same parameter count and
the same wall time: held-out NLL in nats. Prints a table and writes ``benchmarks/results/flows.json``.

    python benchmarks/flows.py [--datasets moons checkerboard] [--seconds 15] [--target-params 30000] [--threads 1]

Architectures (each library's own layers; hidden widths chosen per library so the parameter count is the closest
to ``--target-params``):

* ``realnvp``: 8 affine couplings, MLP conditioners of 2 hidden layers, masks alternating (unidm
  :func:`unidm.nn.flows.realnvp_flow`; ``zuko.flows.RealNVP``; normflows ``AffineCouplingBlock`` + swap).
* ``maf``: 6 masked affine autoregressive layers (unidm's ``maf`` family wraps ``zuko.flows.MAF``; normflows
  ``MaskedAffineAutoregressive`` + swap).
* ``nsf``: 4 autoregressive rational-quadratic spline layers, 8 bins (unidm's ``nsf`` wraps ``zuko.flows.NSF``;
  normflows ``AutoregressiveRationalQuadraticSpline`` + swap, tail bound 3, which holds both datasets).

Every row trains with the same loop for the same wall time: Adam, learning rate 2e-3, batch 256, gradient norm
clipped at 1, batches from one seeded generator; then the mean ``-log p`` of the first ``--n-test`` held-out points
(nats per 2-D point; lower is better). unidm's rows call the family's ``loss`` (``-log p / D``), the others their
library's ``log_prob``. Since unidm's maf and nsf are zuko's transforms under unidm's prior and sampling, those rows
differ from zuko's only by the steps the wrapper's overhead costs and by the initial weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from unidm.data import build_dataset
from unidm.methods.flows import RealNVP
from unidm.methods.zuko_flows import MAF, NSF, zuko_flow
from unidm.nn.flows import realnvp_flow

ARCHS = {"realnvp": 8, "maf": 6, "nsf": 4}  # layers per architecture
HIDDEN = range(8, 257, 4)


class _LibFlow(torch.nn.Module):
    """A library flow with ``log_prob(x) -> [B]``."""

    def __init__(self, net, log_prob):
        super().__init__()
        self.net = net
        self._log_prob = log_prob

    def loss(self, batch, generator=None):
        return -self._log_prob(self.net, batch["x"]) / batch["x"].shape[1]

    def log_prob(self, x):
        return self._log_prob(self.net, x)


def _unidm(arch: str, hidden: int):
    n = ARCHS[arch]
    if arch == "realnvp":
        return RealNVP(realnvp_flow((2,), couplings=n, hidden=hidden, depth=2), data_shape=(2,))
    cls = MAF if arch == "maf" else NSF
    return cls(zuko_flow(arch, 2, transforms=n, hidden=hidden, depth=2), data_shape=(2,))


def _zuko(arch: str, hidden: int):
    import zuko

    n, h = ARCHS[arch], (hidden, hidden)
    net = {"realnvp": lambda: zuko.flows.RealNVP(2, transforms=n, hidden_features=h),
           "maf": lambda: zuko.flows.MAF(2, transforms=n, hidden_features=h),
           "nsf": lambda: zuko.flows.NSF(2, transforms=n, hidden_features=h, bins=8)}[arch]()
    return _LibFlow(net, lambda m, x: m().log_prob(x))


def _normflows(arch: str, hidden: int):
    import normflows as nf

    flows = []
    for _ in range(ARCHS[arch]):
        if arch == "realnvp":
            flows.append(nf.flows.AffineCouplingBlock(nf.nets.MLP([1, hidden, hidden, 2], init_zeros=True)))
        elif arch == "maf":
            flows.append(nf.flows.MaskedAffineAutoregressive(2, hidden, num_blocks=1))
        else:
            flows.append(nf.flows.AutoregressiveRationalQuadraticSpline(2, 1, hidden, num_bins=8, tail_bound=3.0))
        flows.append(nf.flows.Permute(2, mode="swap"))
    net = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
    return _LibFlow(net, lambda m, x: m.log_prob(x))


LIBRARIES = {"unidm": _unidm, "zuko": _zuko, "normflows": _normflows}


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched(library: str, arch: str, target: int, seed: int):
    """The library's model whose parameter count is closest to ``target`` over the hidden widths tried."""
    build = LIBRARIES[library]
    best = min(HIDDEN, key=lambda h: abs(_params(build(arch, h)) - target))
    torch.manual_seed(seed)
    return build(arch, best), best


def train_for(model, data, seconds: float, seed: int, batch: int = 256, lr: float = 2e-3) -> int:
    """Adam for ``seconds`` of wall time; returns the steps taken."""
    opt = torch.optim.Adam(model.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(len(data.train), (batch,), generator=g)
        loss = model.loss({"x": data.train[idx]}).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    return steps


@torch.no_grad()
def held_out_nll(model, x: torch.Tensor) -> tuple[float, float]:
    model.eval()
    nll = -torch.cat([model.log_prob(c) for c in x.split(2500)])
    return float(nll.mean()), float(nll.std() / len(nll) ** 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["moons", "checkerboard"])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    p.add_argument("--seconds", type=float, default=15.0, help="training wall time per row")
    p.add_argument("--target-params", type=int, default=30000)
    p.add_argument("--n-test", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "flows.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    print(f"{'data':13s} {'arch':8s} {'library':10s} {'hidden':>6s} {'params':>7s} {'steps':>6s} {'NLL nats':>16s}")
    for name in args.datasets:
        data = build_dataset(name)
        x_test = data.test[:args.n_test]
        for arch in args.archs:
            for lib in args.libraries:
                try:
                    model, hidden = matched(lib, arch, args.target_params, args.seed)
                except ImportError as e:
                    print(f"{name:13s} {arch:8s} {lib:10s} skipped: {e}")
                    continue
                steps = train_for(model, data, args.seconds, args.seed)
                nll, se = held_out_nll(model, x_test)
                row = {"data": name, "arch": arch, "library": lib, "hidden": hidden, "params": _params(model),
                       "steps": steps, "seconds": args.seconds, "nll": nll, "nll_se": se}
                rows.append(row)
                print(f"{name:13s} {arch:8s} {lib:10s} {hidden:6d} {row['params']:7d} {steps:6d} "
                      f"{nll:9.4f} ± {se:.4f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "torch_threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
