"""Uniform-replacement (multinomial) diffusion against brute-force mathematics on tiny vocabularies.

The exact model is the true posterior ``p(x0^i | x_t)`` of a finite data set, computed by enumeration. Identities
checked (derived in docs/discrete.md, "Uniform replacement"):

- for data whose positions are independent the per-position reverse step is the true reverse, and for every x0
  ``NELBO(x0) = -log p_data(x0) + E_{q(x_T|x0)}[log q(x_T) - log Cat(x_T; 1/K)]`` exactly (the last term is the
  cost of the uniform prior, zero when ``alpha_1 = 0``);
- for any data and any model, averaged over the data,
  ``E NELBO = H(p_data) + KL(q(x_T) || Cat(1/K)) + sum_k E_{q(x_k)} KL(q(x_{k-1} | x_k) || p(x_{k-1} | x_k))``,
  with the true reverse ``q(x_{k-1} | x_k)`` built from the joint transition matrices over all ``K^L`` sequences.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats
from torch import nn

from unidm.methods.uniform import UniformDiffusion, sample_uniform_ancestral
from unidm.processes.absorbing import MASKING_SCHEDULES
from unidm.processes.uniform import (posterior_probs, prior_kl, replace_tokens, reverse_probs, transition_matrix,
                                     uniform_marginal)

K = 3
SCHEDULES = sorted(MASKING_SCHEDULES)


def _alphas(name: str, steps: int) -> torch.Tensor:
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    a = MASKING_SCHEDULES[name]().alpha(t)
    a[0] = 1.0
    return a


# --------------------------------------------------------------------------------------------------- process


@pytest.mark.parametrize("name", SCHEDULES)
def test_composed_one_step_matrices_give_the_marginal(name):
    a = _alphas(name, 7)
    x0 = torch.arange(4)[:, None]
    prod = torch.eye(4, dtype=torch.float64)
    for k in range(1, 8):
        prod = prod @ transition_matrix(float(a[k] / a[k - 1]), 4)
        torch.testing.assert_close(prod, uniform_marginal(x0, a[k], 4)[:, 0], rtol=0, atol=1e-14)
        torch.testing.assert_close(prod.sum(-1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-14)


def test_replace_tokens_draws_the_marginal_and_rows_use_their_own_generator():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 4, (20000, 3), generator=g)
    x_t = replace_tokens(x0, 0.3, 4, g)
    for v in range(4):  # q(x_t = j | x0 = v) = 0.3 [j = v] + 0.7 / 4
        counts = torch.bincount(x_t[x0 == v], minlength=4).numpy()
        expected = uniform_marginal(torch.tensor([v]), 0.3, 4)[0].numpy() * counts.sum()
        assert stats.chisquare(counts, expected).pvalue > 1e-4
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = replace_tokens(torch.zeros(3, 16).long(), torch.tensor([0.5, 0.5, 0.5]), 4, gens)
    alone = replace_tokens(torch.zeros(1, 16).long(), 0.5, 4, [torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1:2], alone)


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_is_bayes_rule_by_enumeration(name):
    """q(x_s | x_t, x0) ∝ q(x_t | x_s) q(x_s | x0) over the 3 values of x_s, for every (x0, x_t) and s < t."""
    a = _alphas(name, 5)
    for s, t in [(0, 1), (1, 2), (2, 5), (0, 5), (3, 4)]:
        step = transition_matrix(float(a[t] / a[s]), K)  # q(x_t | x_s), also across several steps
        from_x0 = uniform_marginal(torch.arange(K)[:, None], a[s], K)[:, 0]  # q(x_s | x0) [x0, x_s]
        for x0, xt in itertools.product(range(K), repeat=2):
            joint = step[:, xt] * from_x0[x0]
            got = posterior_probs(torch.tensor([[xt]]), torch.tensor([[x0]]), a[s], a[t], K)[0, 0]
            torch.testing.assert_close(got, joint / joint.sum(), rtol=0, atol=1e-13)


def test_reverse_step_is_the_posterior_averaged_over_x0():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 4, K, generator=g, dtype=torch.float64), -1)
    x_t = torch.randint(0, K, (5, 4), generator=g)
    a_s, a_t = torch.rand(5, dtype=torch.float64, generator=g) * 0.5 + 0.5, torch.rand(5, dtype=torch.float64) * 0.5
    brute = sum(posterior_probs(x_t, torch.full_like(x_t, j), a_s, a_t, K) * p[..., j:j + 1] for j in range(K))
    torch.testing.assert_close(reverse_probs(x_t, p, a_s, a_t), brute, rtol=0, atol=1e-13)


def test_prior_kl_closed_form():
    for a in (0.0, 0.2, 0.9):
        q = uniform_marginal(torch.tensor([[1]]), a, K)[0, 0]
        expected = float((q * (q * K).log()).sum())
        assert float(prior_kl(torch.tensor([[1, 2]]), a, K)[0]) == pytest.approx(2 * expected, abs=1e-13)


# --------------------------------------------------------------------------------------------------- exact model


class ExactPosterior(nn.Module):
    """The per-position posterior ``p(x0^i | x_t)`` of the finite data set ``seqs`` with probabilities ``probs``
    under the model's forward process, as logits (``c_noise = t`` rounded to the grid ``k / T``)."""

    def __init__(self, seqs: torch.Tensor, probs: torch.Tensor, alpha, num_steps: int, leave_one_out: bool):
        super().__init__()
        self.seqs, self.log_probs, self.alpha, self.num_steps = seqs, probs.double().log(), alpha, num_steps
        self.leave_one_out = leave_one_out  # q(x0^i | x_t^{-i}): what the other positions say about token i
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x_t, c_noise, class_labels=None):
        t = torch.round(c_noise.double() * self.num_steps) / self.num_steps
        a = self.alpha(t)[:, None, None]
        log_lik = (a * (x_t[:, None, :] == self.seqs[None]).double() + (1 - a) / K).log()  # [B, N, L]
        log_w = self.log_probs[None, :, None] + log_lik.sum(-1, keepdim=True)  # [B, N, 1]: all positions
        if self.leave_one_out:
            log_w = log_w - log_lik  # [B, N, L]: all positions but i
        w = torch.softmax(log_w, 1).expand(-1, -1, x_t.shape[1])  # posterior over the data set
        marg = torch.einsum("bnl,nlk->blk", w, nn.functional.one_hot(self.seqs, K).double())
        return marg.clamp_min(1e-300).log()


def _exact_model(seqs, probs, schedule="linear", num_steps=6, aux_weight=0.0, skip=False) -> UniformDiffusion:
    """The model whose p(x0^i | x_t) is the true posterior: the oracle's full posterior as plain logits, or (skip)
    the leave-one-out posterior plus the model's own closed-form log q(x_t^i | x0^i)."""
    model = UniformDiffusion(nn.Identity(), K, schedule=schedule, num_steps=num_steps, aux_weight=aux_weight,
                             likelihood_skip=skip, data_shape=(seqs.shape[1],))
    model.net = ExactPosterior(seqs, probs, model.alpha, num_steps, leave_one_out=skip)
    return model


ALL2 = torch.tensor(list(itertools.product(range(K), repeat=2)))  # every sequence of length 2


def _exact_nelbo(model: UniformDiffusion, x0: torch.Tensor) -> float:
    """prior + sum_k E_{q(x_k | x0)} step_kl, the expectation by enumerating every x_k."""
    states = torch.tensor(list(itertools.product(range(K), repeat=x0.numel())))
    total = float(model.prior_term(x0[None])[0])
    for k in range(1, model.num_steps + 1):
        a = model.alpha(torch.tensor(k / model.num_steps, dtype=torch.float64))
        marg = uniform_marginal(x0[None], a, K)[0]  # [L, K]
        weight = marg[torch.arange(x0.numel()), states].prod(-1)
        kl = model.step_kl(x0.expand(len(states), -1), states, torch.full((len(states),), k))
        total += float((weight * kl).sum())
    return total


def _independent_data():
    p1, p2 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    return ALL2, p1[ALL2[:, 0]] * p2[ALL2[:, 1]]


@pytest.mark.parametrize("schedule", ["linear", "log-linear"])
def test_elbo_of_exact_model_is_the_nll_for_independent_positions(schedule):
    seqs, probs = _independent_data()
    model = _exact_model(seqs, probs, schedule, num_steps=5)
    a_T = model.alpha(torch.tensor(1.0, dtype=torch.float64))
    # the data marginal at T over all 9 sequences: sum_n p_n prod_i q(x_T^i | x0_n^i)
    lik_T = uniform_marginal(seqs, a_T, K)  # [N, L, K]
    q_T = torch.stack([(probs * lik_T[:, 0, s[0]] * lik_T[:, 1, s[1]]).sum() for s in ALL2])
    for n in range(len(seqs)):
        x0 = seqs[n]
        q_xT = lik_T[n, 0][ALL2[:, 0]] * lik_T[n, 1][ALL2[:, 1]]  # q(x_T | x0) over all x_T
        slack = float((q_xT * (q_T.log() + 2 * math.log(K))).sum())
        assert _exact_nelbo(model, x0) == pytest.approx(-math.log(probs[n]) + slack, abs=1e-9)
    if schedule == "linear":
        assert float(q_T.max() - q_T.min()) < 1e-15  # alpha_1 = 0: the prior is exact, no slack


def _joint_matrix(keep: float, states: torch.Tensor) -> torch.Tensor:
    """q(x_k = b | x_{k-1} = a) over whole sequences: the product of the per-position matrices."""
    q = transition_matrix(keep, K)
    return q[states[:, None, 0], states[None, :, 0]] * q[states[:, None, 1], states[None, :, 1]]


def _model_reverse(model, k: int) -> torch.Tensor:
    """p(x_{k-1} = a | x_k = b) [b, a] of the model: the product of its per-position reverse steps."""
    t = torch.full((len(ALL2),), k / model.num_steps, dtype=torch.float64)
    a_t, a_s = model.alpha(t), model.alpha(t - 1 / model.num_steps)
    r = reverse_probs(ALL2, model.log_probs(ALL2, t).exp(), a_s, a_t)  # [b, L, K]
    return r[:, 0][:, ALL2[:, 0]] * r[:, 1][:, ALL2[:, 1]]


def test_elbo_identity_on_correlated_data_and_gap_vanishes_with_steps():
    seqs, probs = torch.tensor([[0, 0], [1, 2], [2, 1]]), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    p_data = torch.zeros(len(ALL2), dtype=torch.float64)
    p_data[seqs[:, 0] * K + seqs[:, 1]] = probs
    entropy = -float((probs * probs.log()).sum())
    gaps = {}
    for steps in (4, 32):
        model = _exact_model(seqs, probs, "cosine", num_steps=steps)
        a = model.alpha(torch.arange(steps + 1, dtype=torch.float64) / steps)
        q_prev, reverse_kl = p_data, 0.0
        for k in range(1, steps + 1):
            joint = q_prev[:, None] * _joint_matrix(float(a[k] / a[k - 1]), ALL2)  # q(x_{k-1} = a, x_k = b)
            q_k = joint.sum(0)
            true_rev = (joint / q_k.clamp_min(1e-300)).T  # q(x_{k-1} = a | x_k = b) [b, a]
            p_rev = _model_reverse(model, k)
            kl = (torch.xlogy(true_rev, true_rev) - torch.xlogy(true_rev, p_rev)).sum(-1)
            reverse_kl += float((q_k * kl).sum())
            q_prev = q_k
        prior_kl_marg = float((q_prev * (q_prev * len(ALL2)).log()).sum())
        mean_nelbo = sum(float(p) * _exact_nelbo(model, x0) for p, x0 in zip(probs, seqs))
        assert mean_nelbo == pytest.approx(entropy + prior_kl_marg + reverse_kl, abs=1e-9)
        assert reverse_kl > 1e-4  # correlated positions: a per-position reverse step is not the true one
        gaps[steps] = reverse_kl
    assert gaps[32] < gaps[4] / 4  # ... but it becomes exact as steps shrink (the gap is O(1/T))


@pytest.mark.parametrize("seqs, probs", [(torch.tensor([[0, 0], [1, 2], [2, 1]]), torch.tensor([0.5, 0.3, 0.2])),
                                         _independent_data()])
def test_likelihood_skip_is_bayes_rule(seqs, probs):
    """With the skip, a network that outputs q(x0^i | x_t^{-i}) gives exactly the posterior q(x0^i | x_t)."""
    full, skip = _exact_model(seqs, probs.double(), skip=False), _exact_model(seqs, probs.double(), skip=True)
    t = torch.randint(1, 7, (len(ALL2),), generator=torch.Generator().manual_seed(0)).double() / 6
    torch.testing.assert_close(skip.log_probs(ALL2, t).exp(), full.log_probs(ALL2, t).exp(), rtol=0, atol=1e-12)


def test_monte_carlo_bound_and_loss_are_unbiased():
    seqs, probs = _independent_data()
    model = _exact_model(seqs, probs, "cosine", num_steps=6)
    x0 = seqs[5]
    exact = _exact_nelbo(model, x0)
    g = torch.Generator().manual_seed(0)
    est = model.nelbo(x0.expand(3000, -1), n_t=6, generator=g)  # n_t = T: every step once per sequence
    assert abs(float(est.mean()) - exact) < 4.5 * float(est.std()) / math.sqrt(len(est))
    loss = model.loss({"x": x0.expand(3000, -1)}, g).double() * 2  # aux_weight 0: nats per token -> per sequence
    assert abs(float(loss.mean()) - exact) < 4.5 * float(loss.std()) / math.sqrt(len(loss))
    res = model.likelihood(x0.expand(4, -1).clone(), generator=g, n_t=2)
    assert res.kind == "bound" and res.nll.shape == (4,)


def test_auxiliary_weight_adds_the_cross_entropy():
    seqs, probs = _independent_data()
    plain, aux = _exact_model(seqs, probs, num_steps=6), _exact_model(seqs, probs, num_steps=6, aux_weight=0.5)
    batch = {"x": seqs}
    a = plain.loss(batch, torch.Generator().manual_seed(1)).double()
    b = aux.loss(batch, torch.Generator().manual_seed(1)).double()
    assert bool((b >= a - 1e-6).all()) and float((b - a).max()) > 0


# --------------------------------------------------------------------------------------------------- sampling


def _chain_distribution(model, steps: int) -> torch.Tensor:
    """The law of the sampler's output over the 9 sequences: Cat(1/K) pushed through the model's reverse steps."""
    p = torch.full((len(ALL2),), 1.0 / len(ALL2), dtype=torch.float64)
    for k in range(steps, 0, -1):
        p = p @ _model_reverse(model, k)
    return p


def _counts(x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(x[:, 0] * K + x[:, 1], minlength=K * K).double()


def test_exact_model_samples_the_data_distribution():
    seqs, probs = _independent_data()
    model = _exact_model(seqs, probs, "cosine", num_steps=4)
    x = model.generate(3000, generator=torch.Generator().manual_seed(0), steps=4)
    assert stats.chisquare(_counts(x).numpy(), (probs * 3000).numpy()).pvalue > 1e-3


def test_sampler_follows_its_reverse_chain_on_correlated_data():
    """On correlated data the per-position chain is exact only as steps shrink: the samples follow the chain's own
    law (computed by enumeration), and that law approaches the data's."""
    seqs, probs = torch.tensor([[0, 0], [1, 2], [2, 1]]), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    p_data = torch.zeros(len(ALL2), dtype=torch.float64)
    p_data[seqs[:, 0] * K + seqs[:, 1]] = probs
    tv = {}
    for steps in (3, 48):
        model = _exact_model(seqs, probs, "linear", num_steps=steps)
        law = _chain_distribution(model, steps)
        tv[steps] = 0.5 * float((law - p_data).abs().sum())
        if steps == 3:
            x = model.generate(3000, generator=torch.Generator().manual_seed(1), steps=steps)
            keep = law > 0
            assert stats.chisquare(_counts(x)[keep].numpy(), (law[keep] * 3000).numpy()).pvalue > 1e-3
    assert tv[48] < tv[3] / 4


def test_each_sample_depends_only_on_its_seed():
    seqs, probs = _independent_data()
    model = _exact_model(seqs, probs, num_steps=4)
    x = model.generate(3, seeds=[4, 5, 6], steps=4)
    assert torch.equal(model.generate(1, seeds=[5], steps=4)[0], x[1])
    assert torch.equal(model.generate(3, seeds=[4, 5, 6], steps=4), x)


def test_sampler_function_keeps_a_point_mass():
    probs = torch.zeros(1, 3, K, dtype=torch.float64)
    probs[..., 2] = 1
    out = sample_uniform_ancestral(lambda x, t: probs.expand(len(x), -1, -1), torch.zeros(5, 3).long(),
                                   torch.linspace(1, 0, 9), torch.linspace(0, 1, 9),
                                   generator=torch.Generator().manual_seed(0))
    assert bool((out.x == 2).all()) and out.nfe == 8


# --------------------------------------------------------------------------------------------------- bad input


def _one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_bad_input_gets_one_line():
    seqs, probs = _independent_data()
    model = _exact_model(seqs, probs, num_steps=4)
    with pytest.raises(ValueError) as e:
        model.likelihood(torch.tensor([[0, 3]]))
    _one_line(e, "0 .. 2", "vocabulary")
    with pytest.raises(ValueError) as e:
        model.likelihood(torch.tensor([[0, 1, 2]]))
    _one_line(e, "[N, 2]")
    with pytest.raises(ValueError) as e:
        model.likelihood(seqs, n_t=0)
    _one_line(e, "n_t")
    with pytest.raises(ValueError) as e:
        model.likelihood(seqs, num_levels=256)
    _one_line(e, "num_levels")
    with pytest.raises(ValueError) as e:
        model.generate(2, sampler="greedy")
    _one_line(e, "unknown sampler", "uniform", "ancestral")
    with pytest.raises(ValueError) as e:
        model.generate(2, temperature="hot")
    _one_line(e, "temperature")
    for kwargs, words in [({"vocab_size": 1}, ("at least 2",)), ({"num_steps": 0}, ("num_steps",)),
                          ({"aux_weight": -1.0}, ("aux_weight",)), ({"schedule": "cos"}, ("schedule", "linear"))]:
        args = {"vocab_size": K, **kwargs}
        with pytest.raises(ValueError) as e:
            UniformDiffusion(nn.Identity(), args.pop("vocab_size"), **args)
        _one_line(e, *words)


def test_from_config_refuses_data_that_are_not_tokens():
    from unidm.config import apply_overrides
    from unidm.presets import get_preset
    from unidm.run import build_data, build_model

    cfg = apply_overrides(get_preset("binary-digits-uniform"), ["data.name=moons"])
    with pytest.raises(ValueError) as e:
        build_model(cfg, build_data(cfg))
    _one_line(e, "uniform", "token data")
    cfg = apply_overrides(get_preset("binary-digits-uniform"), ["method.lambda=0.1"])
    with pytest.raises(ValueError) as e:
        build_model(cfg, build_data(cfg))
    _one_line(e, "lambda", "aux_weight")


def test_cli_trains_scores_and_refuses(tmp_path, capsys):
    import numpy as np

    from unidm.cli import main

    out = str(tmp_path / "run")
    assert main(["train", "binary-digits-uniform", "--out", out, "train.steps=1", "train.batch_size=8",
                 "train.progress=false", "train.num_threads=1", "sample.n=4", "sample.steps=2"]) == 0
    assert main(["likelihood", out, "-n", "4", "--n-t", "2"]) == 0
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 64), 5, dtype=np.int64))
    capsys.readouterr()
    for argv, words in [(["likelihood", out, "--data", str(bad)], ("vocabulary",)),
                        (["sample", out, "-n", "2", "--sampler", "greedy"], ("greedy", "ancestral"))]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
