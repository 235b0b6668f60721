"""Normalizing flows against mathematics: every flow and every layer (parametrized over all of them).

* the log-determinant equals autograd's ``log|det J|`` in float64 (vector flows: the full Jacobian; image flows on
  tiny ``[1, 4, 4]`` and ``[2, 4, 4]`` inputs);
* ``inverse(forward(x)) == x`` to 1e-6 in float64;
* every vector flow's density integrates to 1 on a 2-D grid;
* actnorm's data-dependent init gives zero mean and unit variance per channel and survives save / reload;
* the LU 1x1 convolution's log-determinant is ``H W log|det W|``; squeeze and factor-out invert;
* the training loss is the dequantization bound ``unidm likelihood`` reports, with the same noise;
* bad input (an image the flow cannot squeeze, data of the wrong shape or kind, zuko missing) is refused in one line.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from unidm.data import build_dataset
from unidm.likelihood import dequantized_log_prob
from unidm.methods.flows import FLOW_FAMILIES, Glow, RealNVP, standard_normal_log_prob
from unidm.methods.zuko_flows import ZUKO_FAMILIES, ZukoMissing, zuko_flow, zuko_module
from unidm.nn.flow_layers import (ActNorm, Coupling, DiagonalScaling, FactorOut, FlowSequence, InvertibleLinearLU,
                                  Squeeze, channel_mask, checkerboard_mask, feature_mask)
from unidm.nn.flows import CouplingConvNet, CouplingMLP, Flatten, glow_flow, nice_flow, realnvp_flow

HAS_ZUKO = "zuko" in sys.modules or __import__("importlib").util.find_spec("zuko") is not None


def _scramble(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter off its identity-like initialisation, so no layer is trivially invertible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ---- every flow, every layer ------------------------------------------------------------------------------------
def _vector_flow(name: str, dim: int):
    if name in ZUKO_FAMILIES:
        if not HAS_ZUKO:
            pytest.skip("zuko is not installed (pip install unidm[flows])")
        return ZUKO_FAMILIES[name](zuko_flow(name, dim, transforms=2, hidden=8), data_shape=(dim,))
    builder = {"nice": nice_flow, "realnvp": realnvp_flow, "glow": glow_flow}[name]
    kw = {"steps": 2} if name == "glow" else {"couplings": 4}
    return FLOW_FAMILIES[name](builder((dim,), hidden=8, **kw), data_shape=(dim,))


def _image_flow(name: str, shape):
    builder = {"nice": lambda s: nice_flow(s, couplings=3, hidden=8),
               "realnvp": lambda s: realnvp_flow(s, hidden=4, levels=2, num_blocks=1),
               "glow": lambda s: glow_flow(s, steps=2, hidden=4, levels=2)}[name]
    return FLOW_FAMILIES[name](builder(shape), data_shape=shape)


VECTOR_FLOWS = sorted([*FLOW_FAMILIES, *ZUKO_FAMILIES])
IMAGE_CASES = [(name, shape) for name in sorted(FLOW_FAMILIES) for shape in [(1, 4, 4), (2, 4, 4)]]


def _layers(shape):
    """Every layer kind, built for per-example ``shape``."""
    c = shape[0]
    out = {"actnorm": ActNorm(c), "lu": InvertibleLinearLU(c), "scaling": DiagonalScaling(shape)}
    if len(shape) == 1:
        for scale in ("additive", "tanh", "sigmoid"):
            k = 1 if scale == "additive" else 2
            out[f"coupling-{scale}"] = Coupling(feature_mask(c, "alternate"), CouplingMLP(c, k * c, 8, 1), scale)
        return out
    m = checkerboard_mask(shape, 1)
    out["coupling-checkerboard"] = Coupling(m, CouplingConvNet(c, 2 * c, 4, 1, mask=m), "tanh")
    out["coupling-channel"] = Coupling(channel_mask(shape), CouplingConvNet(c, 2 * c, 4, 1), "sigmoid")
    out["squeeze"] = Squeeze()
    out["flatten"] = Flatten(shape)
    squeezed = (4 * c, shape[1] // 2, shape[2] // 2)
    inner = FlowSequence([ActNorm(2 * c), InvertibleLinearLU(2 * c)], (2 * c, *squeezed[1:]))
    out["factor-out"] = FlowSequence([Squeeze(), FactorOut(squeezed, inner)], shape)
    return out


LAYER_CASES = [(shape, name) for shape in [(3,), (2, 4, 4)] for name in _layers(shape)]


def _bijection(case):
    """``(forward, inverse, x)`` in float64 for a flow or layer case, with scrambled parameters."""
    torch.manual_seed(0)
    kind, name, shape = case
    if kind == "layer":
        layer = _layers(shape)[name].double()
        _scramble(layer)
        layer.eval()
        return layer, layer.forward, layer.inverse, shape
    model = (_vector_flow(name, shape[0]) if kind == "vector" else _image_flow(name, shape)).double()
    model.initialize(torch.randn(64, *shape, dtype=torch.float64))
    _scramble(model, scale=0.1)
    model.eval()
    return model, model.transform, model.inverse, shape


CASES = ([("vector", n, (3,)) for n in VECTOR_FLOWS] + [("image", n, s) for n, s in IMAGE_CASES]
         + [("layer", n, s) for s, n in LAYER_CASES])
IDS = [f"{k}-{n}-{'x'.join(map(str, s))}" for k, n, s in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_logdet_is_autograd_log_abs_det_jacobian(case):
    _, forward, _, shape = _bijection(case)
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, logdet = forward(x)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: forward(v.reshape(1, *shape))[0].flatten(), x[i].flatten(),
                                                 vectorize=True)
        assert jac.shape[0] == jac.shape[1] == math.prod(shape)
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inverse_of_forward_is_identity(case):
    _, forward, inverse, shape = _bijection(case)
    x = torch.randn(5, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z, _ = forward(x)
        torch.testing.assert_close(inverse(z), x, rtol=0, atol=1e-6)
        torch.testing.assert_close(forward(inverse(z))[0], z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", VECTOR_FLOWS)
def test_vector_flow_density_integrates_to_one(name):
    model, _, _, _ = _bijection(("vector", name, (2,)))
    half, n = 9.0, 301  # the latent's N(0, I) puts < 1e-15 outside; the flows stay close to the identity
    t = torch.linspace(-half, half, n, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    with torch.no_grad():
        p = torch.exp(model.log_prob(grid)).reshape(n, n)
    mass = torch.trapezoid(torch.trapezoid(p, t, dim=1), t)
    assert abs(float(mass) - 1) < 1e-2, float(mass)


def test_log_prob_is_the_standard_normal_of_the_latent_plus_logdet():
    model, forward, _, _ = _bijection(("vector", "realnvp", (2,)))
    x = torch.randn(4, 2, dtype=torch.float64)
    z, logdet = forward(x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + logdet
    torch.testing.assert_close(model.log_prob(x), expected)
    torch.testing.assert_close(standard_normal_log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1))


# ---- actnorm, LU, squeeze -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3,), (3, 4, 4)])
def test_actnorm_init_normalises_per_channel_and_survives_reload(shape, tmp_path):
    layer = ActNorm(shape[0])
    x = 2.0 + 3.0 * torch.randn(256, *shape, dtype=torch.float64)
    z, _ = layer.double()(x)
    dims = [0, *range(2, z.ndim)]
    torch.testing.assert_close(z.mean(dims), torch.zeros(shape[0], dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(z.var(dims, unbiased=False), torch.ones(shape[0], dtype=torch.float64), rtol=0,
                               atol=1e-5)
    assert bool(layer.initialized)
    save_file(layer.state_dict(), str(tmp_path / "w.safetensors"))
    fresh = ActNorm(shape[0]).double()
    fresh.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh.train()(5.0 + torch.randn(16, *shape, dtype=torch.float64))  # another batch: no second init
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_glow_family_sets_actnorm_from_the_data_once(tmp_path):
    data = build_dataset("moons")
    cfg = {"steps": 2, "hidden": 8}
    torch.manual_seed(0)
    model = Glow.from_config(cfg, {"init_size": 256}, data)
    norms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert norms and all(bool(m.initialized) for m in norms)
    first = norms[0]
    assert float(first.loc.detach().abs().sum()) > 0  # set from the data, not left at the identity
    torch.manual_seed(0)
    again = Glow.from_config(cfg, {"init_size": 256}, data)  # the same seeded initialisation: the same weights
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    empty = type(data)(data.name, data.train[:0], data.test[:0], kind=data.kind)  # a run loaded without its data
    loaded = Glow.from_config(cfg, {}, empty)
    assert not any(bool(m.initialized) for m in loaded.modules() if isinstance(m, ActNorm))
    loaded.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    loaded.train().loss({"x": data.train[:32]})  # training mode, a new batch: nothing is initialised again
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_lu_conv_logdet_is_hw_log_abs_det_w():
    layer = _scramble(InvertibleLinearLU(3).double())
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    z, logdet = layer(x)
    w = layer.weight()
    expected = 5 * 4 * torch.linalg.slogdet(w)[1]
    torch.testing.assert_close(logdet, expected.expand(2))
    torch.testing.assert_close(z, torch.nn.functional.conv2d(x, w[:, :, None, None]))


def test_squeeze_and_unsqueeze_are_inverse():
    x = torch.randn(3, 2, 6, 4)
    z, logdet = Squeeze()(x)
    assert z.shape == (3, 8, 3, 2) and torch.equal(logdet, torch.zeros(3))
    assert torch.equal(Squeeze().inverse(z), x)
    y = torch.randn(3, 8, 3, 2)
    assert torch.equal(Squeeze()(Squeeze().inverse(y))[0], y)
    assert sorted(z.flatten().tolist()) == sorted(x.flatten().tolist())  # a permutation


# ---- training loss and likelihood share one dequantization ----------------------------------------------------
def test_training_loss_is_the_dequantized_bound_the_likelihood_reports():
    data = build_dataset("digits")
    torch.manual_seed(0)
    model = RealNVP.from_config({"levels": 2, "hidden": 4, "num_blocks": 1}, {}, data).eval()
    x = data.test[:6]
    loss = model.loss({"x": x}, torch.Generator().manual_seed(7))
    res = model.likelihood(x, num_levels=17, generator=torch.Generator().manual_seed(7))
    log_prob, _ = dequantized_log_prob(model.log_prob, x, 17, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(res.nll, -log_prob)
    torch.testing.assert_close(loss, res.nll / 64)
    torch.testing.assert_close(loss / math.log(2), res.bits_per_dim)


def test_samples_are_per_seed_and_follow_the_inverse():
    model, _, inverse, _ = _bijection(("vector", "glow", (2,)))
    x = model.generate(3, seeds=[4, 5, 6])
    torch.testing.assert_close(model.generate(1, seeds=[5])[0], x[1])
    cold = model.generate(2, seeds=[4, 5], temperature=0.0)
    torch.testing.assert_close(cold, inverse(torch.zeros(2, 2, dtype=torch.float64)))


# ---- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder,levels", [(realnvp_flow, 2), (glow_flow, 1)])
def test_an_image_the_flow_cannot_squeeze_is_refused(builder, levels):
    with pytest.raises(ValueError, match=r"multiples of 2; got 1x7x8, which allows 0 squeeze") as e:
        builder((1, 7, 8), levels=levels)
    assert "\n" not in str(e.value)


def test_data_of_the_wrong_shape_or_kind_is_refused():
    model = _vector_flow("realnvp", 2)
    with pytest.raises(ValueError, match=r"per-example shape \(2,\), got a batch of shape \(4, 3\)"):
        model.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="needs continuous data"):
        RealNVP.from_config({}, {}, build_dataset("binary-digits"))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nice_flow((1,))
    with pytest.raises(ValueError, match="unknown model option for family 'glow'.*valid"):
        Glow.from_config({"width": 3}, {}, build_dataset("moons"))
    if HAS_ZUKO:
        with pytest.raises(ValueError, match="takes vectors.*for images use nice, realnvp or glow"):
            ZUKO_FAMILIES["maf"].from_config({}, {}, build_dataset("digits"))


def test_missing_zuko_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zuko", None)  # import zuko now raises ImportError
    with pytest.raises(ZukoMissing, match=r'pip install "unidm\[flows\]"') as e:
        zuko_module()
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
