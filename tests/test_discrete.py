"""Masked (absorbing) diffusion: the process's marginals, the samplers' unmasking probabilities, the ELBO of exact
models, and the plumbing (datasets, metrics, CLI)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from unidm.data.discrete import decode, text_windows
from unidm.evaluation.token_metrics import CharNGram, frechet_distance
from unidm.methods.masked import MaskedDiffusion
from unidm.methods.masked_sampling import sample_masked_ancestral, sample_masked_greedy
from unidm.nn.transformer import TokenMLP, Transformer
from unidm.processes.absorbing import MASKING_SCHEDULES, mask_tokens, unmask_probability

SCHEDULES = sorted(MASKING_SCHEDULES)


def _z(observed: float, expected: float, n: int) -> float:
    """z-score of a binomial frequency."""
    return abs(observed - expected) / math.sqrt(max(expected * (1 - expected), 1e-12) / n)


# --------------------------------------------------------------------------------------------------- process


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_ends_monotone_and_derivative(name):
    s = MASKING_SCHEDULES[name]()
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64, requires_grad=True)
    a = s.alpha(t)
    (grad,) = torch.autograd.grad(a.sum(), t)
    torch.testing.assert_close(s.d_alpha(t.detach()), grad, rtol=1e-10, atol=1e-10)
    assert float(s.alpha(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0)
    assert float(s.alpha(torch.tensor(1.0, dtype=torch.float64))) <= 1e-3 + 1e-12
    assert bool((a[1:] < a[:-1]).all())


@pytest.mark.parametrize("name", SCHEDULES)
def test_masking_marginal_is_one_minus_alpha(name):
    """Each token is masked with probability 1 - alpha_t, independently, whatever its value."""
    s = MASKING_SCHEDULES[name]()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 5, (4000, 16), generator=g)
    for t in (0.1, 0.5, 0.9):
        alpha = s.alpha(torch.full((4000,), t, dtype=torch.float64))
        x_t = mask_tokens(x0, alpha, mask_id=5, generator=g)
        masked = x_t == 5
        assert bool((x_t[~masked] == x0[~masked]).all())
        expected = 1 - float(alpha[0])
        assert _z(float(masked.double().mean()), expected, masked.numel()) < 4.5
        for v in range(5):  # independent of the token's value
            sel = x0 == v
            assert _z(float(masked[sel].double().mean()), expected, int(sel.sum())) < 4.5
    # pairs of positions are independent: P(both masked) = (1 - alpha)^2
    alpha = s.alpha(torch.full((4000,), 0.5, dtype=torch.float64))
    m = mask_tokens(x0, alpha, 5, g) == 5
    both = float((m[:, 0] & m[:, 1]).double().mean())
    assert _z(both, (1 - float(alpha[0])) ** 2, 4000) < 4.5


# --------------------------------------------------------------------------------------------------- samplers


def _fixed_denoiser(probs: torch.Tensor):
    """``p(x0 | x_t)`` = ``probs [L, V]`` at every position, whatever ``x_t``."""
    calls = []

    def denoise(x_t, rows):
        calls.append(len(rows))
        return probs.expand(x_t.shape[0], *probs.shape).clone()

    return denoise, calls


@pytest.mark.parametrize("a_t, a_s", [(0.0, 0.3), (0.2, 0.5), (0.6, 0.65), (0.4, 1.0)])
def test_ancestral_step_reveals_with_posterior_probability(a_t, a_s):
    """One step from t to s reveals a masked token with probability (alpha_s - alpha_t) / (1 - alpha_t) and draws
    its value from the model's categorical; revealed tokens never change again."""
    n, length, v = 3000, 8, 4
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(length, v)
    denoise, _ = _fixed_denoiser(probs)
    g = torch.Generator().manual_seed(2)
    x = torch.full((n, length), v, dtype=torch.long)
    x[:, 0] = 2  # an already revealed token stays
    out = sample_masked_ancestral(denoise, x, torch.tensor([a_t, a_s]), v, generator=g).x
    assert bool((out[:, 0] == 2).all())
    revealed = out[:, 1:] != v
    p = float(unmask_probability(torch.tensor(a_s), torch.tensor(a_t)))
    assert _z(float(revealed.double().mean()), p, revealed.numel()) < 4.5
    vals = out[:, 1:][revealed]
    for k in range(v):
        assert _z(float((vals == k).double().mean()), float(probs[0, k]), len(vals)) < 4.5


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ancestral_marginal_follows_schedule(name):
    """Run from all-MASK: after each step the masked fraction is 1 - alpha at that grid point (the reverse chain has
    the forward process's marginals)."""
    s = MASKING_SCHEDULES[name]()
    t = torch.linspace(1, 0, 9, dtype=torch.float64)
    alphas = s.alpha(t)
    alphas[-1] = 1.0
    n, length = 2000, 16
    denoise, _ = _fixed_denoiser(torch.full((length, 3), 1 / 3))
    fractions = []
    sample_masked_ancestral(denoise, torch.full((n, length), 3), alphas, 3, generator=torch.Generator().manual_seed(3),
                            callback=lambda k, x: fractions.append(float((x == 3).double().mean())))
    for k, f in enumerate(fractions):
        assert _z(f, 1 - float(alphas[k + 1]), n * length) < 4.5


def test_cache_changes_nothing_and_saves_evaluations():
    """With more steps than tokens most steps reveal nothing: the cache skips them and the samples are identical."""
    torch.manual_seed(0)
    net = TokenMLP(vocab_size=4, seq_len=6, hidden=16, depth=1, out_size=3)
    nn.init.normal_(net.mlp.out.weight)
    model = MaskedDiffusion(net, vocab_size=3)
    model.data_shape = (6,)
    a = model.sample(5, seeds=range(5), steps=40, cache=True)
    b = model.sample(5, seeds=range(5), steps=40, cache=False)
    assert torch.equal(a.x, b.x)
    assert b.evals_per_sample == b.nfe > 20  # without the cache: every row every step until all revealed
    assert a.evals_per_sample <= 6 and a.nfe < b.nfe
    # a sample depends on its seed only, not on the batch it is drawn in
    c = model.sample(2, seeds=[3, 4], steps=40)
    assert torch.equal(c.x, a.x[3:])
    assert not bool((a.x == model.mask_id).any())


def test_greedy_reveals_schedule_counts_and_most_confident():
    length, v = 10, 3
    # position i is certain (prob 1 - eps) for even i, uncertain for odd i
    probs = torch.full((length, v), 1 / 3)
    probs[::2] = torch.tensor([0.98, 0.01, 0.01])
    denoise, _ = _fixed_denoiser(probs)
    alphas = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    seen = []
    out = sample_masked_greedy(denoise, torch.full((4, length), v), alphas, v, temperature=0.0,
                               callback=lambda k, x: seen.append(x.clone()))
    first = seen[0] != v
    assert bool((first.sum(-1) == 5).all())  # floor(10 * (1 - 0.5)) = 5 remain masked
    assert bool(first[:, ::2].all())  # the confident positions first
    assert bool((out.x[:, ::2] == 0).all()) and not bool((out.x == v).any())


def test_sampler_names_and_options_are_checked():
    model = MaskedDiffusion(TokenMLP(vocab_size=3, seq_len=4, hidden=8, depth=1, out_size=2), vocab_size=2)
    model.data_shape = (4,)
    with pytest.raises(ValueError, match="ancestral, greedy"):
        model.generate(2, sampler="heun")
    with pytest.raises(ValueError, match="temperature"):
        model.generate(2, sampler="ancestral", bogus=1)
    with pytest.raises(ValueError, match="uniform-t"):
        model.generate(2, grid="log-snr")


# --------------------------------------------------------------------------------------------------- ELBO


class _ExactJoint(nn.Module):
    """The exact ``p(x0^i | x_t)`` of a joint distribution over all ``V^L`` sequences, by enumeration."""

    def __init__(self, probs: torch.Tensor, length: int, vocab: int):
        super().__init__()
        self.seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
        self.probs, self.vocab = probs.double(), vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, c_noise, class_labels=None):
        mask_id = self.vocab
        consistent = ((self.seqs[None] == x_t[:, None]) | (x_t[:, None] == mask_id)).all(-1)  # [B, S]
        w = self.probs[None] * consistent
        w = w / w.sum(-1, keepdim=True)
        onehot = nn.functional.one_hot(self.seqs, self.vocab).double()  # [S, L, V]
        marg = torch.einsum("bs,slv->blv", w, onehot)
        return marg.clamp_min(1e-300).log()


def _joint(length, vocab, seed, independent):
    g = torch.Generator().manual_seed(seed)
    if independent:
        pi = torch.softmax(torch.randn(length, vocab, generator=g, dtype=torch.float64), -1)
        seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
        return pi[torch.arange(length), seqs].prod(-1)
    p = torch.rand(vocab**length, generator=g, dtype=torch.float64) ** 3 + 1e-3
    return p / p.sum()


@pytest.mark.parametrize("independent", [True, False], ids=["independent", "correlated"])
def test_elbo_of_exact_model_is_the_nll(independent):
    """For the exact p(x0 | x_t), the masked-diffusion ELBO is tight: E[-ELBO(x0)] = -log p(x0) for every x0
    (the ELBO averages any-order autoregressive factorizations, each exact)."""
    length, vocab = 3, 3
    probs = _joint(length, vocab, 0, independent)
    net = _ExactJoint(probs, length, vocab)
    model = MaskedDiffusion(net, vocab_size=vocab).double()
    g = torch.Generator().manual_seed(4)
    x0 = net.seqs.repeat_interleave(400, 0)
    est = model.nelbo(x0, n_t=8, generator=g).reshape(len(net.seqs), 400)
    mean, se = est.mean(1), est.std(1) / math.sqrt(400)
    nll = -probs.log()
    assert bool(((mean - nll).abs() < 4.5 * se + 1e-9).all()), (mean - nll) / se
    # the expected NELBO under the data is the entropy
    entropy = float((probs * nll).sum())
    assert float((probs * mean).sum()) == pytest.approx(entropy, abs=4.5 * float((probs * se).sum()))


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
def test_training_loss_estimates_the_nll_for_any_schedule(name):
    """The training loss (one t per example, schedule weight) is an unbiased estimate of the same bound, in nats
    per token."""
    length, vocab = 3, 2
    probs = _joint(length, vocab, 1, False)
    net = _ExactJoint(probs, length, vocab)
    model = MaskedDiffusion(net, vocab_size=vocab, schedule=name).double()
    g = torch.Generator().manual_seed(5)
    x0 = net.seqs.repeat(3000, 1)  # interleaved, so the batch's stratified times spread over every sequence
    losses = model.loss({"x": x0}, g).reshape(3000, len(net.seqs)).T * length
    mean, se = losses.mean(1), losses.std(1) / math.sqrt(3000)
    nll = -probs.log()
    assert bool(((mean - nll).abs() < 4.5 * se + 1e-6).all()), (mean - nll) / se


def test_subs_parameterization_and_bits_per_token():
    torch.manual_seed(0)
    model = MaskedDiffusion(Transformer(vocab_size=5, seq_len=6, width=16, depth=1, heads=2), vocab_size=4)
    model.data_shape = (6,)
    x_t = torch.tensor([[0, 4, 2, 4, 3, 1]])
    with torch.no_grad():
        lp = model.log_probs(x_t)
    assert lp.shape == (1, 6, 4)
    assert float(lp[0, 0, 0]) == 0.0 and float(lp[0, 2, 2]) == 0.0  # carry-over of revealed tokens
    torch.testing.assert_close(lp[0, 1].exp().sum(), torch.tensor(1.0))
    # an untrained network's output is uniform (zero-initialized head): the bound's expectation is log2(4) = 2 bits
    assert model.bits_per_token(torch.randint(0, 4, (200, 6)), n_t=8) == pytest.approx(2.0, abs=0.08)


@pytest.mark.parametrize("family", ["masked", "uniform"])
def test_likelihood_scores_the_tokens_on_the_models_device(family, monkeypatch):
    """The bound runs where the model is: ``likelihood`` hands ``nelbo`` the tokens on the model's device (faked as
    ``meta`` here, so a CPU run catches tokens left on the CPU)."""
    from unidm.methods.uniform import UniformDiffusion

    cls = MaskedDiffusion if family == "masked" else UniformDiffusion
    model = cls(TokenMLP(vocab_size=4 + cls.extra_input_ids, seq_len=3, hidden=8, depth=1), 4, data_shape=(3,))
    seen = []

    def nelbo(x0, **kwargs):
        seen.append(x0.device)
        return torch.zeros(len(x0), dtype=torch.float64)

    monkeypatch.setattr(cls, "device", property(lambda self: torch.device("meta")))
    monkeypatch.setattr(model, "nelbo", nelbo)
    model.likelihood(torch.zeros(2, 3, dtype=torch.long), n_t=2)
    assert seen == [torch.device("meta")]


# --------------------------------------------------------------------------------------------------- data, metrics


def test_text_windows_split_by_position_and_decode():
    text = "".join(chr(97 + (i * 7) % 26) for i in range(2000))
    ds = text_windows(text, seq_len=16, stride=4, test_fraction=0.1, name="t")
    assert ds.kind == "tokens" and ds.vocab_size == 26 and ds.train.shape[1] == 16
    assert decode(ds.train[:1], ds.meta["itos"])[0] == text[:16]
    assert decode(ds.test[:1], ds.meta["itos"])[0] == text[1800:1816]
    assert int(ds.train.max()) < 26


def test_ngram_recovers_entropy_of_a_markov_chain():
    """An order-2 model fitted on a long binary Markov chain gives its entropy rate in bits."""
    g = torch.Generator().manual_seed(0)
    p_stay = 0.9
    x = [0]
    u = torch.rand(20000, generator=g).tolist()
    for ui in u:
        x.append(x[-1] if ui < p_stay else 1 - x[-1])
    seqs = torch.tensor(x[:20000]).reshape(100, 200)
    lm = CharNGram(order=2, vocab_size=2).fit(seqs[:50])
    h = -(p_stay * math.log2(p_stay) + (1 - p_stay) * math.log2(1 - p_stay))
    assert lm.bits_per_token(seqs[50:]) == pytest.approx(h, abs=0.03)


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2 + 1
    # |mu|^2 + tr(I + 4I - 2 * 2I) = 3 + 3
    assert frechet_distance(x, y) == pytest.approx(6.0, rel=0.05)


def test_cli_train_sample_eval_digits(tmp_path):
    """The preset runs end to end through the CLI: train, samples.png, sample, eval."""
    from unidm.cli import main

    out = tmp_path / "run"
    assert main(["train", "digits-masked", "--out", str(out), "train.steps=4", "train.batch_size=16",
                 "model.hidden=32", "model.depth=1", "sample.steps=8", "train.progress=false"]) == 0
    assert (out / "samples.png").exists()
    assert main(["eval", str(out), "-n", "32", "--json"]) == 0
    assert main(["sample", str(out), "-n", "4", "--steps", "4", "--out", str(tmp_path / "s.npz")]) == 0
