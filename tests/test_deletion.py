"""Deletion diffusion: the forward process against its closed forms, the samplers against exact posteriors, the
data's and the run's refusals.

Closed forms (:mod:`unidm.processes.deletion`): the length of ``x_t`` is ``Binomial(n, alpha_t)``, each token survives
independently with probability ``alpha_t``, and ``q(x_t | x0) = E(x_t, x0) alpha^m (1 - alpha)^(n - m)`` (``E`` the
number of embeddings). Samplers: an exact predictor ``p(x0 | x_t)`` is computed by enumeration over a small data
set, ``p(x0 | x_t) ∝ p_data(x0) q(x_t | x0)``; with it both samplers must return the data in its proportions, and
the nested sampler's intermediate states must follow the forward marginals.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from unidm.data.sequences import pad_sequences, sequences_from_text, text_file_sequences_dataset
from unidm.methods.deletion import DeletionDiffusion
from unidm.methods.deletion_sampling import (sample_deletion_baseline, sample_deletion_nested, sample_embedding)
from unidm.nn.seq2seq import Seq2SeqTransformer
from unidm.processes.deletion import (count_embeddings, delete_tokens, deletion_log_prob, is_subsequence,
                                      survival_ratio)
from unidm.rng import seed_generators

PAD = 9
P_MIN = 1e-4  # every chi-square test below fails a correct implementation with probability <= 1e-4


def _rows(seqs: list[list[int]], length_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_sequences(seqs, length_max, PAD)


def _repeat(seq: list[int], rows: int, length_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, length = pad_sequences([seq], length_max, PAD)
    return x.expand(rows, -1).contiguous(), length.expand(rows).contiguous()


def _as_lists(x: torch.Tensor, length: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r[:n]) for r, n in zip(x.tolist(), length.tolist())]


def _chisquare(counts: dict, probs: dict) -> float:
    """p-value of observed ``counts`` against ``probs`` (keys with probability 0 must not be observed)."""
    assert set(counts) <= {k for k, p in probs.items() if p > 0}, set(counts) - set(probs)
    keys = [k for k, p in probs.items() if p > 0]
    total = sum(counts.values())
    obs = [counts.get(k, 0) for k in keys]
    z = sum(probs[k] for k in keys)
    exp = [probs[k] / z * total for k in keys]
    return float(stats.chisquare(obs, exp).pvalue) if len(keys) > 1 else 1.0


def _subsequence_law(x0: list[int], alpha: float) -> dict[tuple[int, ...], float]:
    """``q(x_t | x0)`` for every distinct subsequence of ``x0`` (enumerated)."""
    subs = {tuple(x0[i] for i in keep) for r in range(len(x0) + 1) for keep in itertools.combinations(range(len(x0)), r)}
    return {s: math.exp(deletion_log_prob(list(s), x0, alpha)) for s in subs}


def _counts(items) -> dict:
    out: dict = {}
    for k in items:
        out[k] = out.get(k, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------- forward process
def test_length_is_binomial_and_survivors_keep_their_order():
    n, alpha, rows = 7, 0.35, 40_000
    x, length = _repeat(list(range(n)), rows, 9)
    d = delete_tokens(x, length, alpha, PAD, torch.Generator().manual_seed(0))
    pmf = stats.binom(n, alpha).pmf(range(n + 1))
    assert _chisquare(_counts(d.length.tolist()), dict(enumerate(pmf))) > P_MIN
    for row, m in zip(d.x.tolist(), d.length.tolist()):  # distinct tokens: survivors strictly increasing
        assert row[:m] == sorted(set(row[:m])) and all(v == PAD for v in row[m:])


def test_each_token_survives_independently_with_probability_alpha():
    n, alpha, rows = 6, 0.4, 40_000
    x, length = _repeat(list(range(n)), rows, 8)
    keep = delete_tokens(x, length, torch.full((rows,), alpha), PAD, torch.Generator().manual_seed(1)).keep
    assert not keep[:, n:].any()
    pairs = list(itertools.combinations(range(n), 2))
    for i, j in pairs:  # the 2x2 joint of every pair against alpha^2, alpha (1 - alpha), ... (Bonferroni)
        cells = {(a, b): int(((keep[:, i] == a) & (keep[:, j] == b)).sum()) for a in (0, 1) for b in (0, 1)}
        probs = {(a, b): (alpha if a else 1 - alpha) * (alpha if b else 1 - alpha) for a in (0, 1) for b in (0, 1)}
        assert _chisquare(cells, probs) > P_MIN / len(pairs), (i, j)


def test_closed_form_likelihood_sums_to_one_and_counts_embeddings():
    x0 = [0, 1, 0, 2, 0]
    for alpha in (0.0, 0.3, 1.0):
        assert sum(_subsequence_law(x0, alpha).values()) == pytest.approx(1.0, abs=1e-12)
    assert count_embeddings([0, 0], x0) == 3 and count_embeddings([0, 2], x0) == 2
    assert count_embeddings([2, 1], x0) == 0 and not is_subsequence([2, 1], x0)
    assert deletion_log_prob([2, 1], x0, 0.5) == -math.inf


def test_one_step_kernels_compose_to_the_marginal():
    x0, rows = [0, 1, 0, 2], 30_000
    alphas = [1.0, 0.8, 0.55, 0.3]
    x, length = _repeat(x0, rows, 5)
    g = torch.Generator().manual_seed(2)
    for a_prev, a_next in zip(alphas[:-1], alphas[1:]):
        x, length = delete_tokens(x, length, survival_ratio(a_prev, a_next), PAD, g)[:2]
    assert _chisquare(_counts(_as_lists(x, length)), _subsequence_law(x0, alphas[-1])) > P_MIN
    assert float(survival_ratio(0.0, 0.0)) == 0.0


# ---------------------------------------------------------------------------------------------- exact predictors
def _exact_predictor(data: dict[tuple[int, ...], float]):
    """``predict`` drawing from the exact ``p(x0 | x_t) ∝ p_data(x0) q(x_t | x0)`` with ``u[:, 0]``."""
    seqs = list(data)

    def predict(x_t, length_t, alpha_t, u, rows, *, constrain, temperature):
        out = []
        for sub, u0 in zip(_as_lists(x_t, length_t), u[:, 0].tolist()):
            w = torch.tensor([data[s] * math.exp(deletion_log_prob(list(sub), list(s), alpha_t)) for s in seqs],
                             dtype=torch.float64)
            assert w.sum() > 0, f"x_t {sub} impossible under the data"
            k = int(torch.searchsorted((w / w.sum()).cumsum(0), torch.tensor([u0], dtype=torch.float64)).clamp_max(
                len(seqs) - 1))
            out.append(list(seqs[k]))
        return _rows(out, x_t.shape[1])

    return predict


def _start(n: int, length_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, length_max), PAD, dtype=torch.long), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("sampler", [sample_deletion_nested, sample_deletion_baseline])
def test_one_sequence_comes_back_at_every_run(sampler):
    seq = (3, 1, 3, 0, 2)
    predict = _exact_predictor({seq: 1.0})
    for steps in (1, 3, 10):
        alphas = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        x, length = _start(20, 6)
        out = sampler(predict, x, length, alphas, PAD, generator=seed_generators(range(20), steps))
        assert set(_as_lists(out.x, out.length)) == {seq}


DATA = {(0, 1): 0.3, (1, 0): 0.2, (0, 1, 0): 0.25, (1,): 0.15, (): 0.1}


@pytest.mark.parametrize("sampler", [sample_deletion_nested, sample_deletion_baseline])
def test_samplers_return_the_data_in_its_proportions(sampler):
    n = 3000
    alphas = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    x, length = _start(n, 4)
    out = sampler(_exact_predictor(DATA), x, length, alphas, PAD, generator=torch.Generator().manual_seed(4))
    assert _chisquare(_counts(_as_lists(out.x, out.length)), DATA) > P_MIN


def test_nested_sampler_states_follow_the_forward_marginals():
    # with x0 known exactly, each state of the reverse chain must be distributed as q(x_t | x0) at its alpha;
    # x0 = (0, 1, 0) has x_t = (0,) in two ways, which a fixed (leftmost) alignment would get wrong
    x0, n = (0, 1, 0, 2, 0), 4000
    alphas = torch.tensor([0.0, 0.4, 0.7, 1.0], dtype=torch.float64)
    states = {}
    x, length = _start(n, 5)
    sample_deletion_nested(_exact_predictor({x0: 1.0}), x, length, alphas, PAD,
                           generator=torch.Generator().manual_seed(5),
                           callback=lambda k, x: states.setdefault(k, x.clone()))
    for k in (0, 1):
        got = _counts(_as_lists(states[k], (states[k] != PAD).sum(-1)))
        assert _chisquare(got, _subsequence_law(list(x0), float(alphas[k + 1]))) > P_MIN, k


def test_embedding_is_drawn_uniformly():
    n = 6000
    x0, n0 = _repeat([0, 0, 1, 0], n, 4)
    x_t, m = _repeat([0, 0], n, 4)
    taken = sample_embedding(x_t, m, x0, n0, torch.rand(n, 4, generator=torch.Generator().manual_seed(6)))
    got = _counts(tuple(i for i in range(4) if row[i]) for row in taken.tolist())
    assert _chisquare(got, {(0, 1): 1 / 3, (0, 3): 1 / 3, (1, 3): 1 / 3}) > P_MIN


# ----------------------------------------------------------------------------------------------------- the model
def _tiny_model(vocab: int = 2, max_len: int = 2, seed: int = 0) -> DeletionDiffusion:
    torch.manual_seed(seed)
    net = Seq2SeqTransformer(vocab_size=vocab + 2, seq_len=max_len + 1, width=16, enc_depth=1, dec_depth=1,
                             heads=2, out_size=vocab + 1)
    torch.nn.init.normal_(net.out.weight, std=1.0)  # a non-uniform model
    return DeletionDiffusion(net, vocab, max_len=max_len, itos="abc"[:vocab]).eval()


def test_decoder_is_a_normalised_distribution_and_decoding_draws_from_it():
    model = _tiny_model()
    seqs = [s for r in range(3) for s in itertools.product(range(2), repeat=r)]
    x0, n0 = pad_sequences([list(s) for s in seqs], 2, 2)
    x_t, m = pad_sequences([[1]] * len(seqs), 2, 2)
    with torch.no_grad():
        p = torch.exp(-model.nll(x0, n0, x_t, m, torch.full((len(seqs),), 0.5, dtype=torch.float64)))
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    rows = 8000
    u = torch.rand(rows, 3, generator=torch.Generator().manual_seed(7))
    xt, mt = pad_sequences([[1]] * rows, 2, 2)
    draws = model.predict(xt, mt, 0.5, u, constrain=False)
    assert _chisquare(_counts(_as_lists(*draws)), dict(zip(seqs, p.tolist()))) > P_MIN


def test_constrained_decoding_holds_x_t():
    model = _tiny_model(vocab=3, max_len=5, seed=1)
    model.net = Seq2SeqTransformer(vocab_size=5, seq_len=6, width=16, enc_depth=1, dec_depth=1, heads=2, out_size=4)
    torch.nn.init.normal_(model.net.out.weight, std=3.0)
    subs = [[], [2], [0, 1], [2, 2, 0], [1, 0, 2, 1], [0, 0, 0, 0, 0]]
    x_t, m = pad_sequences(subs * 50, 5, 3)
    x0, n0 = model.predict(x_t, m, 0.3, torch.rand(len(x_t), 6, generator=torch.Generator().manual_seed(8)))
    for sub, got in zip(subs * 50, _as_lists(x0, n0)):
        assert is_subsequence(sub, list(got)) and len(got) <= 5


def test_per_seed_samples_and_both_samplers():
    model = _tiny_model(vocab=3, max_len=4)
    for sampler in ("nested", "baseline"):
        x = model.generate(4, seeds=[1, 2, 3, 4], sampler=sampler, steps=3)
        assert torch.equal(model.generate(1, seeds=[3], sampler=sampler, steps=3)[0], x[2])
    with pytest.raises(ValueError, match="unknown sampler 'ddpm'.*baseline, nested"):
        model.generate(1, seeds=[0], sampler="ddpm")
    with pytest.raises(ValueError, match="unknown option 'constrained'"):
        model.generate(1, seeds=[0], sampler="nested", constrained=True)


# ------------------------------------------------------------------------------------------------- bad input
def test_data_refusals(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        text_file_sequences_dataset(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no lines"):
        text_file_sequences_dataset(str(blank))
    long = tmp_path / "long.txt"
    long.write_text("short\nalso short\n" + "x" * 30 + "\nend\n")
    with pytest.raises(ValueError, match=r"line 3: a line of 30 characters .* longer than data.max_len=12") as e:
        text_file_sequences_dataset(str(long), max_len=12)
    assert len(str(e.value).splitlines()) == 1
    cut = text_file_sequences_dataset(str(long), max_len=12, too_long="truncate", test_fraction=0.25)
    assert int(cut.extras["length"].max()) == 12
    dropped = text_file_sequences_dataset(str(long), max_len=12, too_long="drop", test_fraction=0.34)
    assert len(dropped.train) + len(dropped.test) == 3
    with pytest.raises(ValueError, match="unknown data.unit 'chars'; valid: lines, words"):
        sequences_from_text("a b", "x", unit="chars")
    with pytest.raises(ValueError, match="unknown data.too_long 'cut'"):
        sequences_from_text("a b", "x", too_long="cut")


def test_vocabulary_mismatch_between_run_and_data_is_refused(tmp_path, capsys):
    from unidm.cli import main

    text = tmp_path / "lines.txt"
    text.write_text("".join(f"line {i} abc\n" for i in range(40)))
    out = str(tmp_path / "run")
    assert main(["train", "text-deletion", "--out", out, "data.name=text-file-sequences", f"data.path={text}",
                 "data.max_len=12", "train.steps=1", "train.batch_size=4", "train.progress=false",
                 "train.num_threads=1", "model.width=16", "sample.n=2", "sample.steps=1"]) == 0
    text.write_text("".join(f"line {i} xyz\n" for i in range(40)))  # the run's data file now has other symbols
    capsys.readouterr()
    assert main(["eval", out, "-n", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocabulary mismatch" in err and "abc" in err and "xyz" in err
    text.unlink()  # the data file gone: the run still samples (its vocabulary is in its weights), but cannot decode
    assert main(["sample", out, "-n", "2", "--steps", "1", "--out", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    assert main(["sample", out, "-n", "2", "--steps", "1", "--out", str(tmp_path / "s.npz"),
                 "--plot", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lines.txt" in err


def test_family_refuses_fixed_length_tokens():
    from unidm.presets import get_preset
    from unidm.run import build_data, build_model

    cfg = get_preset("text-deletion")
    cfg.data = {"name": "binary-digits"}
    with pytest.raises(ValueError, match="family 'deletion' needs variable-length sequences"):
        build_model(cfg, build_data(cfg))
