"""Drawing a run's coupling ``(z, x1[, y])`` through its probability-flow ODE, and storing it for reflow.

Reflow (Liu et al. 2022, "Flow Straight and Fast", Algorithm 1): the ``k``-rectified flow's ODE maps prior noise
``z`` to ``x1``; the ``k+1``-rectified flow is trained on these fixed pairs. Here ``z`` of seed ``s`` is the run's
own prior draw at unit scale (``process.prior_sample(shape, 1, seeds=[s])``, so ``sigma_max * z`` is the start of
``model.generate(seeds=[s])``) and ``x1`` is the ODE's end, by default an adaptive Dormand–Prince solve. A
class-conditional run draws label ``y`` of seed ``s`` with the training class frequencies
(:meth:`unidm.data.Dataset.draw_labels`).

:func:`write_pairs` stores them in chunks of consecutive seeds, each chunk one safetensors file written atomically,
so a killed generation resumes where it stopped and yields the same pairs bitwise (a chunk is always the same seeds
in the same batch). The reading side is :mod:`unidm.data.pairs`.

>>> import torch
>>> from unidm.oracles import GaussianOracle
>>> from unidm.processes import build_process
>>> flow = build_process("flow", {"t_max": 1 - 1e-6})
>>> oracle = GaussianOracle(torch.tensor([1.0, -1.0], dtype=torch.float64), torch.full((2,), 4.0, dtype=torch.float64))
>>> z, x1 = coupling_pairs(oracle, flow, range(3), (2,), dtype=torch.float64)
>>> bool(torch.allclose(x1, oracle.mean + 2.0 * z, atol=1e-4))  # the exact ODE maps z to mu + c z
True
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import torch
from torch import Tensor

from .data.pairs import chunk_done, chunk_name, num_chunks, read_manifest, write_manifest
from .methods import DenoisingModel, TrainableModel
from .processes import GaussianProcess
from .samplers import make_grid, sample
from .train.checkpoint import atomic_save_safetensors, param_digest

__all__ = ["SOLVERS", "coupling_pairs", "check_parent", "weights_digest", "write_pairs", "pairs_for_run",
           "pairs_spec"]

#: ODE solvers for the pairs: ``adaptive`` (Dormand–Prince 5(4), tolerances ``rtol``/``atol``) or a fixed-step
#: deterministic solver of :data:`unidm.samplers.METHODS` with ``steps`` steps on the uniform-t grid
SOLVERS = ("adaptive", "heun", "euler", "dpmpp_2m")

#: the settings that decide the pairs; a pairs folder made with others is refused
SPEC_KEYS = ("digest", "n", "seed", "chunk_size", "solver", "steps", "rtol", "atol", "conditional", "shape")


def coupling_pairs(denoiser, process, seeds: Sequence[int], shape: Sequence[int], *, solver: str = "adaptive",
                   steps: int | None = None, class_labels: Tensor | None = None, rtol: float = 1e-5,
                   atol: float = 1e-5, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(z, x1)``, ``[len(seeds), *shape]`` each: ``z`` the unit prior noise of each seed, ``x1`` the end of the
    probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. 4) from
    ``sigma_max z`` to 0 through ``denoiser`` ``D(x, sigma, **cond)``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown pairs solver {solver!r}; valid: {', '.join(SOLVERS)}")
    seeds = list(seeds)
    z = process.prior_sample((len(seeds), *shape), 1.0, seeds=seeds, dtype=dtype).to(device)
    if solver == "adaptive":
        grid, options = make_grid("uniform-t", 2, process), {"rtol": rtol, "atol": atol}
    else:
        k = int(steps or 32)
        grid, options = make_grid("uniform-t", k, process, t_min=process.t_max_sampling / k), {}
    cond = {} if class_labels is None else {"class_labels": class_labels.to(device)}
    x = z * float(grid[0])
    with torch.no_grad():
        x1 = sample(denoiser, x, grid.to(dtype), method=solver, **cond, **options)
    return z, x1


def check_parent(model: TrainableModel, path: str, what: str = "reflow") -> None:
    """Refuse, with one line, a run whose coupling cannot be drawn by a deterministic ODE from a Gaussian prior:
    anything but a :class:`~unidm.methods.DenoisingModel` on a :class:`~unidm.processes.GaussianProcess` with the
    Gaussian prior draw (``prior_sample`` not replaced, as PFGM++'s Student-t prior replaces it; a run trained with
    a coupling or on fixed pairs qualifies, though its process is marked non-Gaussian because its ``D`` is no
    posterior mean), the adaptive solver among its samplers and no frozen sub-models (a distilled student is not a
    flow to straighten)."""
    process = getattr(model, "process", None)
    gaussian_prior = (isinstance(process, GaussianProcess)
                      and type(process).prior_sample is GaussianProcess.prior_sample)
    ok = (isinstance(model, DenoisingModel) and gaussian_prior
          and "adaptive" in model.samplers and not type(model).frozen_keys)
    if not ok:
        family = getattr(model, "family", type(model).__name__)
        on = f" on process {process.name!r}" if isinstance(process, GaussianProcess) else ""
        raise ValueError(f"{what} needs a diffusion or flow run sampled by a deterministic probability-flow ODE "
                         f"from a Gaussian prior; {path} is a {family!r} run{on}, which is not")


def weights_digest(model: TrainableModel) -> str:
    """SHA-256 of the model's weights (:func:`unidm.train.checkpoint.param_digest`)."""
    return param_digest(model.state_dict())


def pairs_spec(model: TrainableModel, parent: str, n: int, seed: int = 0, solver: str = "adaptive",
               steps: int | None = None, chunk_size: int = 1000, rtol: float = 1e-5, atol: float = 1e-5) -> dict:
    """The manifest of ``n`` pairs of ``model`` (the run in folder ``parent``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--pairs must be a whole number >= 1, got {n!r}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown --solver {solver!r}; valid: {', '.join(SOLVERS)}")
    return {"parent": os.path.abspath(parent), "digest": weights_digest(model), "n": int(n), "seed": int(seed),
            "chunk_size": int(chunk_size), "solver": solver, "steps": None if solver == "adaptive" else int(steps or 32),
            "rtol": float(rtol), "atol": float(atol), "conditional": model.num_classes > 0,
            "shape": list(model.data_shape)}


def write_pairs(folder: str, spec: dict, make_chunk: Callable[[range], dict[str, Tensor]], *,
                max_chunks: int | None = None, rank: int = 0, world: int = 1, progress: bool = True) -> dict:
    """Fill ``folder`` with the chunks of ``spec`` that are not there yet; ``make_chunk(seeds)`` draws one chunk.

    Rank ``r`` of ``world`` draws chunks ``r, r + world, ...``. ``max_chunks`` stops after that many new chunks
    (an interrupted generation, for tests). A folder whose manifest was made with other settings (another parent's
    weights, another seed, solver or size) is refused. Returns ``{"chunks", "done", "new", "seconds"}``.
    """
    if os.path.isfile(os.path.join(folder, "pairs.json")):
        stored = read_manifest(folder)
        diff = [k for k in SPEC_KEYS if stored.get(k) != spec.get(k)]
        if diff:
            what = "another run's weights" if "digest" in diff else f"other settings ({', '.join(diff)})"
            raise ValueError(f"{folder} holds pairs drawn with {what}: {', '.join(f'{k}={stored.get(k)!r}' for k in diff)}"
                             f"; pick a new --out")
    elif rank == 0:
        write_manifest(folder, spec)
    else:  # another rank writes the manifest; chunks go beside it
        os.makedirs(folder, exist_ok=True)
    k, c = num_chunks(spec), int(spec["chunk_size"])
    todo = [i for i in range(rank, k, world) if not chunk_done(folder, spec, i)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"pairs ({c} a chunk)", dynamic_ncols=True, leave=False)
    t0, new = time.perf_counter(), 0
    for i in todo:
        if max_chunks is not None and new >= max_chunks:
            break
        first = int(spec["seed"]) + i * c
        seeds = range(first, first + min(c, int(spec["n"]) - i * c))
        tensors = make_chunk(seeds)
        atomic_save_safetensors(tensors, os.path.join(folder, chunk_name(i)),
                                metadata={"digest": spec["digest"], "index": str(i), "count": str(len(seeds)),
                                          "first_seed": str(first)})
        new += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    done = sum(chunk_done(folder, spec, i) for i in range(k))
    return {"chunks": k, "done": done, "new": new, "seconds": time.perf_counter() - t0}


def pairs_for_run(run, folder: str, n: int, *, seed: int = 0, solver: str = "adaptive", steps: int | None = None,
                  chunk_size: int = 1000, rtol: float = 1e-5, atol: float = 1e-5, max_chunks: int | None = None,
                  rank: int = 0, world: int = 1, progress: bool = True) -> dict:
    """Draw (or finish drawing) ``n`` pairs of a loaded run (:func:`unidm.run.load_run`) into ``folder``, through
    its EMA denoiser; the run is checked by :func:`check_parent` and never written to. Returns
    :func:`write_pairs`' summary with the ``spec``."""
    model = run.model
    check_parent(model, run.path)
    spec = pairs_spec(model, run.path, n, seed, solver, steps, chunk_size, rtol, atol)
    if spec["conditional"] and (run.data.train_labels is None or not run.data.num_classes):
        raise ValueError(f"{run.path} is class-conditional but its data has no labels to draw the pairs' classes")

    def make_chunk(seeds: range) -> dict[str, Tensor]:
        labels = run.data.draw_labels(seeds) if spec["conditional"] else None
        with model.evaluating():
            z, x1 = coupling_pairs(model.denoiser, model.process, seeds, model.data_shape, solver=solver,
                                   steps=spec["steps"], class_labels=labels, rtol=rtol, atol=atol,
                                   device=model.device)
        out = {"z": z.float().cpu(), "x1": x1.float().cpu()}
        if labels is not None:
            out["y"] = labels.long().cpu()
        return out

    info = write_pairs(folder, spec, make_chunk, max_chunks=max_chunks, rank=rank, world=world, progress=progress)
    return {**info, "spec": spec}
