"""One test for every family in the registry, through its declared faces only.

Each family of :data:`unidm.methods.FAMILIES` is built from the smallest of its presets, trained one step into a run
folder and loaded back; then whatever its faces declare is checked: a generative family draws samples whose
sample ``i`` depends only on seed ``i`` (the same in any batch), a family with a likelihood scores held-out data with
finite numbers of a known kind, a family without one is refused by ``unidm likelihood`` with one line. A new family
gets all of this by adding itself to the registry and to a preset.
"""

from __future__ import annotations

import math

import pytest
import torch

from unidm.cli import main
from unidm.config import apply_overrides
from unidm.likelihood import KINDS
from unidm.methods import FAMILIES, GenerativeModel, SupportsLikelihood
from unidm.presets import FROZEN_PRESETS, PRESETS, get_preset
from unidm.run import build_data, build_model, load_run
from unidm.train import train

TINY = ["train.steps=1", "train.batch_size=8", "train.warmup=0", "train.ema_decay=0", "train.progress=false",
        "train.num_threads=1"]


def _train_tiny(name: str, out: str, extra: list[str] = ()) -> tuple:
    cfg = apply_overrides(get_preset(name), [*TINY, *extra])
    data = build_data(cfg)
    model = build_model(cfg, data)
    train(model, data, cfg.train, out, config_dict=cfg.to_dict(), log=lambda _: None)
    return model


def _frozen_runs(name: str, tmp_path_factory) -> list[str]:
    """``method.KEY=RUN`` overrides for a preset whose family injects frozen runs: each trained one step from the
    preset :data:`unidm.presets.FROZEN_PRESETS` names for it."""
    overrides = []
    for key, teacher in FROZEN_PRESETS.get(name, {}).items():
        out = str(tmp_path_factory.mktemp(f"{name}-{key}") / "run")
        _train_tiny(teacher, out)
        overrides.append(f"method.{key}={out}")
    return overrides


def _smallest_preset(family: str, tmp_path_factory) -> tuple[str, list[str]]:
    """The preset of ``family`` whose model has the fewest parameters, with its frozen-run overrides."""
    names = [n for n, d in PRESETS.items() if d.get("family", "gaussian") == family]
    assert names, f"family {family!r} has no preset"

    def size(name: str) -> int:  # a preset that needs a frozen run is sized by that run's preset
        cfg = get_preset(next(iter(FROZEN_PRESETS[name].values())) if name in FROZEN_PRESETS else name)
        return sum(p.numel() for p in build_model(cfg, build_data(cfg)).parameters())

    name = min(names, key=size)
    return name, _frozen_runs(name, tmp_path_factory)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    """(preset name, in-memory model after one step, loaded run) for one family."""
    family = request.param
    name, frozen = _smallest_preset(family, tmp_path_factory)
    out = str(tmp_path_factory.mktemp(family) / "run")
    model = _train_tiny(name, out, frozen)
    return name, model.eval(), load_run(out), out


def _batch(data, n: int = 8) -> dict:
    return {k: v[:n] for k, v in data.batch(torch.arange(n)).items()}


def test_registry_names_match_and_every_family_has_a_preset():
    for name, cls in FAMILIES.items():
        assert cls.family == name
        assert any(d.get("family", "gaussian") == name for d in PRESETS.values()), name


def test_reloaded_run_computes_exactly_what_the_trained_model_computes(trained):
    # ema_decay = 0: the exported EMA weights are the trained weights, so the reloaded model must agree bitwise
    _, model, run, _ = trained
    assert model.state_dict().keys() == run.model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, run.model.state_dict()[k]), k
    batch = _batch(run.data)
    a = model.loss(batch, torch.Generator().manual_seed(3))
    b = run.model.loss(batch, torch.Generator().manual_seed(3))
    assert a.shape == (8,) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    again = load_run(trained[3])
    assert torch.equal(run.model.loss(batch, torch.Generator().manual_seed(3)),
                       again.model.loss(batch, torch.Generator().manual_seed(3)))


def test_generate_with_seeds_is_per_sample(trained):
    _, model, run, _ = trained
    if not isinstance(run.model, GenerativeModel):
        pytest.skip(f"{run.config.family} does not generate")
    plan = run.model.check_sampling(steps=2)
    kw = {"sampler": plan.sampler, "steps": plan.steps, "grid": plan.grid}
    if run.model.num_classes:
        kw["class_labels"] = 1
    x = run.model.generate(3, seeds=[5, 6, 7], **kw)
    assert x.shape == (3, *run.model.data_shape)
    alone = run.model.generate(1, seeds=[6], **kw)
    # the same seed gives the same sample in any batch, up to the float32 rounding of batched matrix products,
    # relative to the samples' size (a barely trained model may still sample at the prior's scale)
    if x.is_floating_point():
        torch.testing.assert_close(alone[0], x[1], rtol=0, atol=1e-5 * max(1.0, float(x.abs().max())))
    else:
        assert torch.equal(alone[0], x[1])
    assert torch.equal(run.model.generate(3, seeds=[5, 6, 7], **kw), x)  # a seed decides its sample
    assert not torch.equal(x[0], x[2])
    assert torch.equal(model.generate(3, seeds=[5, 6, 7], **kw), x)  # the trained model draws the same


def test_likelihood_where_declared_and_refused_where_not(trained, capsys):
    _, _, run, out = trained
    if isinstance(run.model, SupportsLikelihood) and run.model.likelihood_methods():
        for method, kind in run.model.likelihood_methods().items():
            x = run.data.test[:4]
            x = x.double() if x.is_floating_point() else x
            res = run.model.likelihood(x, method=method, num_levels=run.data.meta.get("levels"),
                                       generator=torch.Generator().manual_seed(0),
                                       **({"rtol": 1e-3, "atol": 1e-3} if method == "ode" else {}))
            assert res.kind == kind and kind in KINDS
            assert res.nll.shape == (4,) and torch.isfinite(res.nll).all()
            dim = x[0].numel()
            torch.testing.assert_close(res.bits_per_dim.double(), res.nll.double() / (dim * math.log(2)))
        with pytest.raises(ValueError, match="not available"):
            run.model.likelihood(run.data.test[:2], method="no-such-method")
    else:
        assert main(["likelihood", out, "-n", "4"]) == 2  # no likelihood face, or none that applies to this run
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no likelihood" in err and run.config.family in err
