"""The autoregressive families against their mathematics: normalization by exact enumeration, autoregressive
dependence by autograd Jacobians, ancestral samples by a chi-square test against ``log_prob``, and one-line refusals.

Every test is parametrized over every autoregressive family; models are tiny, randomly initialized with weights
large enough that their distributions are far from uniform, and in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from unidm.data import Dataset
from unidm.methods import FAMILIES
from unidm.methods.autoregressive import FVSBN, MADE, NADE, AutoregressiveModel, DiscreteData
from unidm.methods.pixelcnn import PixelCNN, raster_order

AR = sorted((cls for cls in FAMILIES.values() if issubclass(cls, AutoregressiveModel)), key=lambda c: c.family)
SIZES = {NADE: {"hidden": 6}, MADE: {"hidden": 12, "depth": 2, "num_masks": 4, "ensemble": 3},
         PixelCNN: {"channels": 6, "layers": 3, "head": 12}}
#: (kind, levels, data shape, image shape): binary vectors, 3 / 17-level images, a 3-colour image
CODECS = {
    "binary-10": DiscreteData("tokens", 2, (10,), (1, 2, 5)),
    "levels-3": DiscreteData("image", 3, (1, 2, 2), (1, 2, 2)),
    "levels-17": DiscreteData("image", 17, (1, 1, 2), (1, 1, 2)),
    "rgb-binary": DiscreteData("image", 2, (3, 1, 2), (3, 1, 2)),
}


def test_every_autoregressive_family_is_tested():
    assert {c.family for c in AR} == {"fvsbn", "nade", "made", "pixelcnn"}


def tiny(cls, codec: DiscreteData, scale: float = 0.8, seed: int = 0, **kw) -> AutoregressiveModel:
    torch.manual_seed(seed)
    model = cls(codec, **{**SIZES.get(cls, {}), **kw}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model.eval()


def all_points(codec: DiscreteData) -> torch.Tensor:
    """Every element of the data space, ``[K^D, *shape]``, in the data's own form."""
    idx = torch.cartesian_prod(*[torch.arange(codec.levels)] * codec.dim).reshape(-1, codec.dim)
    x = codec.to_data(idx)
    return x.double() if x.is_floating_point() else x


def masks(model) -> list[int]:
    return list(range(model.num_masks)) if isinstance(model, MADE) else [0]


def log_prob(model, x, mask: int | None = None):
    return model.log_prob(x) if mask is None else model.log_prob_mask(x, mask)


@pytest.mark.parametrize("codec", list(CODECS), ids=list(CODECS))
@pytest.mark.parametrize("cls", AR, ids=[c.family for c in AR])
def test_probabilities_sum_to_one_over_the_whole_space(cls, codec):
    model = tiny(cls, CODECS[codec])
    x = all_points(model.codec)
    with torch.no_grad():
        for mask in [None] + (masks(model) if isinstance(model, MADE) else []):  # the ensemble and each mask set
            p = log_prob(model, x, mask).exp()
            assert float(p.sum()) == pytest.approx(1.0, abs=1e-10)
            assert float(p.max() / p.min()) > 3  # not the uniform law: the test could fail


def dependence(model, v: torch.Tensor, **kw) -> torch.Tensor:
    """``|d logits_d / d v_j|`` summed with random positive weights over the ``K`` logits ``[D, D]``: zero exactly
    where no logit of ``d`` depends on ``v_j`` (one backward pass per coordinate)."""
    w = torch.rand(model.dim, model.levels, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    return torch.autograd.functional.jacobian(lambda u: (model.logits(u[None], **kw)[0] * w).sum(-1), v).abs()


def _rank(order: torch.Tensor) -> torch.Tensor:
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank


@pytest.mark.parametrize("codec", ["binary-10", "rgb-binary"])
@pytest.mark.parametrize("cls", AR, ids=[c.family for c in AR])
def test_logits_depend_only_on_earlier_coordinates(cls, codec):
    """The autograd Jacobian ``d logits_d / d v_j`` (over all ``K`` logits) is zero unless ``j`` comes before ``d`` in the model's order
    (each of MADE's orderings), and not zero everywhere below the diagonal."""
    model = tiny(cls, CODECS[codec])
    v = torch.rand(model.dim, dtype=torch.float64) * 2 - 1  # any input, not only grid points
    for mask in masks(model):
        kw = {"mask": mask} if isinstance(model, MADE) else {}
        dep = dependence(model, v, **kw)  # [D, D]
        order = model.mask_set(mask)[0] if isinstance(model, MADE) else model.order
        rank = _rank(order)
        later_or_same = rank[None, :] >= rank[:, None]  # [d, j]: j is d itself or after it
        assert float(dep[later_or_same].max()) == 0.0
        assert float(dep[~later_or_same].max()) > 0


def test_pixelcnn_is_causal_and_blind_spot_free_over_pixels_and_colours():
    """Colour ``c`` of pixel ``(i, j)`` depends on every colour of every earlier pixel in raster order and on colours
    ``< c`` of its own pixel, and on nothing else: no blind spot above-right (van den Oord et al. 2016b, Fig. 1)."""
    codec = DiscreteData("image", 4, (3, 3, 3), (3, 3, 3))
    model = tiny(PixelCNN, codec, layers=4)
    dep = torch.zeros(model.dim, model.dim, dtype=torch.bool)
    for _ in range(3):  # a path can be cut at one input by the head's ReLUs; the union over inputs is not
        v = torch.rand(model.dim, dtype=torch.float64) * 2 - 1
        dep |= dependence(model, v) > 0
    rank = _rank(raster_order(3, 3, 3))
    assert torch.equal(dep, rank[None, :] < rank[:, None])
    c, i, j = torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij")
    assert torch.equal(_rank(model.order), ((i * 3 + j) * 3 + c).flatten())  # raster, then colour


def chi_square_p(model, n: int = 6000, seed: int = 0) -> float:
    """Pearson's chi-square p-value of ``n`` ancestral samples against ``exp(log_prob)`` over the whole space, the
    cells expecting fewer than 5 draws pooled into one."""
    x = all_points(model.codec)
    with torch.no_grad():
        p = model.log_prob(x).exp()
        draws = model.sample(n, generator=torch.Generator().manual_seed(seed))
    idx = model.codec.to_index(draws)
    cell = (idx * model.levels ** torch.arange(model.dim - 1, -1, -1)).sum(-1)  # cartesian_prod's order
    observed = torch.bincount(cell, minlength=len(p)).double()
    expected = p / p.sum() * n
    small = expected < 5
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    return float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("codec", [DiscreteData("tokens", 2, (4,), (1, 1, 4)), DiscreteData("image", 3, (1, 1, 3))],
                         ids=["binary-4", "levels-3"])
@pytest.mark.parametrize("cls", AR, ids=[c.family for c in AR])
def test_ancestral_samples_follow_log_prob(cls, codec):
    if cls is PixelCNN and codec.image_shape is None:
        codec = DiscreteData(codec.kind, codec.levels, codec.shape, codec.shape)
    model = tiny(cls, codec, scale=0.6)
    assert chi_square_p(model) > 1e-3


def test_chi_square_detects_a_wrong_sampler():
    # the chi-square check has power: samples of one model against another model's probabilities fail it
    codec = DiscreteData("tokens", 2, (4,))
    model, other = tiny(NADE, codec, scale=0.6), tiny(NADE, codec, scale=0.6, seed=1)
    model.sample = other.sample
    assert chi_square_p(model) < 1e-6


def test_nade_matches_the_running_sum_of_the_paper():
    """Larochelle & Murray 2011, eqs. 2-3: ``a_1 = c``, ``a_{d+1} = a_d + W_{:,d} v_d``, ``h_d = sigmoid(a_d)``."""
    model = tiny(NADE, DiscreteData("image", 5, (1, 2, 3)))
    v = torch.rand(4, model.dim, dtype=torch.float64) * 2 - 1
    a, rows = model.c.expand(4, -1), []
    for d in range(model.dim):
        rows.append(torch.sigmoid(a) @ model.V[d] + model.b[d])
        a = a + v[:, d:d + 1] * model.W[:, d]
    torch.testing.assert_close(model.logits(v), torch.stack(rows, 1), rtol=1e-12, atol=1e-12)


def test_made_ensemble_is_the_mean_of_its_mask_sets_and_orderings_differ():
    model = tiny(MADE, CODECS["binary-10"])
    x = all_points(model.codec)[:50]
    single = torch.stack([model.log_prob_mask(x, j) for j in range(model.ensemble)])
    torch.testing.assert_close(model.log_prob(x), single.exp().mean(0).log())
    orders = {tuple(model.mask_set(j)[0].tolist()) for j in range(model.num_masks)}
    assert len(orders) == model.num_masks and tuple(range(model.dim)) in orders
    g = [torch.Generator().manual_seed(s) for s in range(2)]
    losses = [model.loss({"x": x}, torch.Generator().manual_seed(s)) for s in range(8)]
    assert len({tuple(torch.round(loss, decimals=9).tolist()) for loss in losses}) > 1  # masks drawn per step
    assert torch.equal(model.loss({"x": x}, g[0]), model.loss({"x": x}, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("cls", AR, ids=[c.family for c in AR])
def test_likelihood_is_the_exact_discrete_nll(cls):
    model = tiny(cls, CODECS["levels-3"])
    x = all_points(model.codec)[::7]
    res = model.likelihood(x, num_levels=3)
    assert res.kind == "exact"
    torch.testing.assert_close(res.nll, -model.log_prob(x).detach())
    torch.testing.assert_close(res.bits_per_dim, res.nll / (model.dim * math.log(2)))


# ------------------------------------------------------------------------------------------------------ bad input
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("cls", AR, ids=[c.family for c in AR])
def test_continuous_data_is_refused(cls):
    data = Dataset("moons", torch.randn(20, 2), torch.randn(5, 2), kind="vector")
    with pytest.raises(ValueError, match="discrete data") as e:
        cls.from_config({}, {}, data)
    assert "moons" in _one_line(e)
    off_grid = Dataset("imgs", torch.rand(20, 1, 2, 2) * 2 - 1, torch.zeros(5, 1, 2, 2), kind="image",
                       meta={"levels": 256})
    with pytest.raises(ValueError, match="not on the grid of 256 levels") as e:
        cls.from_config({}, {}, off_grid)
    _one_line(e)


@pytest.mark.parametrize("cls", AR, ids=[c.family for c in AR])
def test_wrong_shapes_values_and_levels_are_refused(cls):
    model = tiny(cls, CODECS["levels-3"])
    with pytest.raises(ValueError, match=r"expected data of shape \[B, 1, 2, 2\]") as e:
        model.log_prob(torch.zeros(3, 4, dtype=torch.float64))
    _one_line(e)
    for bad in (0.3, math.nan, math.inf):
        with pytest.raises(ValueError, match="3-level grid") as e:
            model.log_prob(torch.full((2, 1, 2, 2), bad, dtype=torch.float64))
        _one_line(e)
    with pytest.raises(ValueError, match="3 levels") as e:
        model.likelihood(torch.zeros(2, 1, 2, 2, dtype=torch.float64), num_levels=17)
    _one_line(e)
    tokens = tiny(cls, CODECS["binary-10"])
    with pytest.raises(ValueError, match="symbols 0 .. 1"):
        tokens.log_prob(torch.full((2, 10), 2))


def test_bad_options_are_refused_with_the_valid_ones():
    data = Dataset("bits", torch.randint(2, (20, 6)), torch.randint(2, (4, 6)), kind="tokens", vocab_size=2)
    with pytest.raises(ValueError, match="valid: hidden, depth") as e:
        MADE.from_config({"width": 3}, {}, data)
    _one_line(e)
    with pytest.raises(ValueError, match="valid: num_masks, ensemble, order_agnostic, mask_seed"):
        MADE.from_config({}, {"hidden": 3}, data)
    with pytest.raises(ValueError, match="ensemble=9 cannot average more mask sets than num_masks=4"):
        MADE.from_config({}, {"num_masks": 4, "ensemble": 9}, data)
    with pytest.raises(ValueError, match="builds its own network"):
        NADE.from_config({"arch": "mlp"}, {}, data)
    with pytest.raises(ValueError, match="needs images") as e:
        PixelCNN.from_config({}, {}, data)
    _one_line(e)
