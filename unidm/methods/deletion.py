"""Deletion diffusion for variable-length sequences as a :class:`GenerativeModel`.

Forward process: :mod:`unidm.processes.deletion` (each token survives to ``t`` with probability ``alpha_t``; ``x_t``
is a random subsequence of ``x0``, the empty sequence at ``t = 1``). Network: an encoder-decoder Transformer
(:class:`unidm.nn.seq2seq.Seq2SeqTransformer`) that reads ``x_t`` and ``c_noise = 1 - alpha_t`` and decodes ``x0``
autoregressively, token by token, then an END token: the unified diffusion model's choice of ``q(x0 | x_t)`` for
discrete data of changing length. Loss: the cross-entropy ``-log p(x0 | x_t)`` of the whole sequence, END included
(teacher forcing), with ``t ~ U(0, 1)``. Samplers (:mod:`unidm.methods.deletion_sampling`): ``nested`` (the exact
posterior given the prediction; the default) and ``baseline`` (delete afresh from the prediction).

Ids: the data's symbols are ``0 .. V - 1`` and its pad ``V``; the network's output ``V`` is END and its input
``V + 1`` the decoder's start token (BOS). ``docs/deletion.md`` has the derivations and measurements.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..processes.deletion import DELETION_SCHEDULES, delete_tokens
from ..utils import as_options, check_choice, check_kwargs
from .base import GenerativeModel, TrainableModel
from .deletion_sampling import DELETION_SAMPLERS, DeletionSample
from .token_base import training_times
from .token_sampling import categorical

__all__ = ["DeletionDiffusion", "DELETION_FAMILIES"]


class DeletionDiffusion(GenerativeModel):
    """Deletion diffusion over sequences of at most ``max_len`` of ``vocab_size`` symbols.

    Args:
        net: ``net(src [B, L], src_mask [B, L], c_noise [B], tgt [B, T]) -> logits [B, T, >= V + 1]`` with
            :meth:`encode` / :meth:`decode` (:class:`unidm.nn.seq2seq.Seq2SeqTransformer`); ids ``0 .. V + 1``.
        vocab_size: ``V``, the number of data symbols.
        max_len: ``L``, the longest sequence (the data's padded width).
        schedule: ``alpha_t``, a name of :data:`unidm.processes.deletion.DELETION_SCHEDULES`; ``schedule_options``
            its arguments.
        antithetic: draw the batch's training times as ``(u + i / B) mod 1`` (VDM's low-discrepancy times).
        itos: the data's symbols as a string (kept with the weights, so that a run is never read with another
            vocabulary).

    Example:
        >>> from unidm.nn.seq2seq import Seq2SeqTransformer
        >>> net = Seq2SeqTransformer(vocab_size=5, seq_len=5, width=16, enc_depth=1, dec_depth=1, heads=2,
        ...                          out_size=4)
        >>> model = DeletionDiffusion(net, vocab_size=3, max_len=4, itos="abc")
        >>> x = model.generate(2, seeds=[0, 1], steps=3)
        >>> x.shape, bool(((x >= 0) & (x <= 3)).all())
        (torch.Size([2, 4]), True)
    """

    family = "deletion"
    samplers = DELETION_SAMPLERS
    grids = ("uniform-t",)
    default_sampling = {"sampler": "nested", "steps": 16, "grid": "uniform-t"}
    sampler_seed_offset = 104_729
    sampler_internal = ("predict", "x", "length", "alphas", "pad_id", "generator", "callback")

    def __init__(self, net: nn.Module, vocab_size: int, max_len: int = 16, schedule: str = "linear",
                 schedule_options: dict | None = None, antithetic: bool = True, itos: str | None = None):
        super().__init__((max_len,), 0)
        check_choice(schedule, DELETION_SCHEDULES, "deletion schedule")
        schedule_options = as_options(schedule_options, "method.schedule_options")
        check_kwargs(DELETION_SCHEDULES[schedule], schedule_options, f"schedule_options for {schedule!r}")
        self.net = net
        self.vocab_size, self.max_len = int(vocab_size), int(max_len)
        self.pad_id = self.end_id = self.vocab_size
        self.bos_id = self.vocab_size + 1
        self.schedule = DELETION_SCHEDULES[schedule](**schedule_options)
        self.antithetic = antithetic
        codes = [ord(c) for c in itos] if itos else [-1] * self.vocab_size
        if len(codes) != self.vocab_size:
            raise ValueError(f"itos has {len(codes)} symbols for vocab_size {self.vocab_size}")
        self.register_buffer("vocabulary", torch.tensor(codes, dtype=torch.long))

    # --- the vocabulary travels with the weights ---------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "vocabulary")
        mine = self.vocabulary
        if stored is not None and bool((mine >= 0).all()) and not torch.equal(stored.to(mine.device), mine):
            def show(codes):
                return repr("".join(chr(c) for c in codes.tolist() if c >= 0))[:60]
            raise ValueError(f"vocabulary mismatch: the run was trained on {len(stored)} symbols {show(stored)}, "
                             f"the data gives {len(mine)} symbols {show(mine)}; use the run's own data (its "
                             "config.json's data section)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the network ---------------------------------------------------------------------------------------------
    def _encode(self, x_t: Tensor, length_t: Tensor, alpha_t: Tensor):
        mask = torch.arange(x_t.shape[1], device=x_t.device) < length_t[:, None]
        return self.net.encode(torch.where(mask, x_t, torch.zeros_like(x_t)), mask, (1 - alpha_t).float())

    def _targets(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder input ``[BOS, x0]`` and targets ``[x0, END]`` (``[B, L + 1]`` each); pads after END are ignored."""
        b = x0.shape[0]
        bos = torch.full((b, 1), self.bos_id, dtype=torch.long, device=x0.device)
        end = torch.full((b, 1), self.end_id, dtype=torch.long, device=x0.device)
        return torch.cat([bos, x0], dim=1), torch.cat([x0, end], dim=1)

    def _hint(self, x_t: Tensor, length_t: Tensor, j: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder's side inputs once ``j [B]`` tokens of ``x_t`` are matched: the next one (END when none is
        left) and how many are left."""
        rows = torch.arange(len(j), device=j.device)
        nxt = x_t[rows, j.clamp_max(x_t.shape[1] - 1)]
        return torch.where(j < length_t, nxt, torch.full_like(nxt, self.end_id)), length_t - j

    def _matched(self, x_t: Tensor, length_t: Tensor, j: Tensor, tok: Tensor) -> Tensor:
        """``j`` after the decoder writes ``tok``: leftmost matching of ``x_t`` in the output."""
        rows = torch.arange(len(j), device=j.device)
        return j + ((j < length_t) & (tok == x_t[rows, j.clamp_max(x_t.shape[1] - 1)])).long()

    def nll(self, x0: Tensor, length0: Tensor, x_t: Tensor, length_t: Tensor, alpha_t: Tensor) -> Tensor:
        """``-log p(x0 | x_t)`` in nats per sequence ``[B]`` (the tokens and END, teacher forcing; the distribution
        :meth:`predict` draws from without ``constrain``, so it sums to 1 over all sequences of length ``<= L``)."""
        tgt_in, target = self._targets(x0)
        j = torch.zeros_like(length0)
        hints = []
        for i in range(self.max_len + 1):  # the side inputs along the teacher-forced prefix, as decoding sees them
            hints.append(self._hint(x_t, length_t, j))
            if i < self.max_len:
                j = self._matched(x_t, length_t, j, torch.where(i < length0, x0[:, i], -1))
        hint, count = (torch.stack(h, dim=1) for h in zip(*hints))
        logits = self.net.decode(*self._encode(x_t, length_t, alpha_t), tgt_in, hint,
                                 count)[..., : self.vocab_size + 1]
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target[..., None]).squeeze(-1)
        pos = torch.arange(self.max_len + 1, device=x0.device)
        counted = (pos <= length0[:, None]) & (pos < self.max_len)  # after L tokens END is certain (as decoded)
        return -(logp * counted).sum(-1)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``-log p(x0 | x_t) / (L + 1)`` per example ``[B]``: ``t ~ U(0, 1)`` (antithetic across the batch),
        ``x_t ~ q(x_t | x0)``."""
        x0 = batch["x"].long()
        length0 = batch["length"].long() if "length" in batch else (x0 != self.pad_id).sum(-1)
        t = training_times(x0.shape[0], self.antithetic, x0.device, generator)
        alpha_t = self.schedule.alpha(t).clamp(0.0, 1.0)
        x_t = delete_tokens(x0, length0, alpha_t, self.pad_id, generator)
        return self.nll(x0, length0, x_t.x, x_t.length, alpha_t) / (self.max_len + 1)

    @torch.no_grad()
    def predict(self, x_t: Tensor, length_t: Tensor, alpha_t: float, u: Tensor, rows: Tensor | None = None, *,
                constrain: bool = True, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Draw ``x0_hat ~ p(x0 | x_t)`` by ancestral decoding, token ``i`` from the uniform ``u[:, i]``.

        ``j`` counts the tokens of ``x_t`` matched so far in the output (leftmost matching, which finds an embedding
        whenever one exists); the decoder sees the next token to match and how many are left at every position
        (in training too), so it knows what ``x_t`` still asks of it. With ``constrain`` the decoder may only write
        outputs that hold ``x_t`` as a subsequence: END is
        masked while ``j < m``, and when the positions left equal the tokens of ``x_t`` left, only ``x_t[j]`` may
        be written. The other logits are renormalised (a locally constrained draw, exact when the model already
        puts no mass on outputs without ``x_t``). Returns ``(x0_hat [b, L], length [b])``.
        """
        b, length_max = x_t.shape
        memory, memory_mask = self._encode(x_t, length_t, torch.full((b,), alpha_t, dtype=torch.float64,
                                                                     device=x_t.device))
        out = torch.full_like(x_t, self.pad_id)
        tgt = torch.full((b, 1), self.bos_id, dtype=torch.long, device=x_t.device)
        length = torch.full((b,), length_max, dtype=torch.long, device=x_t.device)
        done = torch.zeros(b, dtype=torch.bool, device=x_t.device)
        j = torch.zeros(b, dtype=torch.long, device=x_t.device)
        rows_b = torch.arange(b, device=x_t.device)
        symbols = torch.arange(self.vocab_size + 1, device=x_t.device)
        hint = count = x_t.new_zeros(b, 0)
        for i in range(length_max + 1):
            h, c = self._hint(x_t, length_t, j)
            hint, count = torch.cat([hint, h[:, None]], dim=1), torch.cat([count, c[:, None]], dim=1)
            logits = self.net.decode(memory, memory_mask, tgt, hint, count)[:, -1, : self.vocab_size + 1].double()
            logits = logits / temperature
            allowed = torch.ones_like(logits, dtype=torch.bool)
            if i == length_max:
                allowed = symbols[None] == self.end_id
            elif constrain:
                need = length_t - j
                nxt = x_t[rows_b, j.clamp_max(length_max - 1)]
                allowed = allowed & ~((symbols[None] == self.end_id) & (need > 0)[:, None])
                forced = (need > 0) & (need >= length_max - i)
                allowed = torch.where(forced[:, None], symbols[None] == nxt[:, None], allowed)
            tok = categorical(torch.softmax(logits.masked_fill(~allowed, -float("inf")), dim=-1), u[:, i].double())
            ends = ~done & (tok == self.end_id)
            length = torch.where(ends, torch.full_like(length, i), length)
            done = done | ends
            if i < length_max:
                out[:, i] = torch.where(done, out[:, i], tok)
                j = torch.where(done, j, self._matched(x_t, length_t, j, tok))
            if bool(done.all()):
                break
            tgt = torch.cat([tgt, torch.where(done, torch.full_like(tok, self.end_id), tok)[:, None]], dim=1)
        return out, length

    # --- sampling ------------------------------------------------------------------------------------------------
    def alpha_grid(self, steps: int, grid: str = "uniform-t") -> Tensor:
        """``alpha`` along ``steps`` equal steps of ``t`` from 1 to 0 (``[steps + 1]``); exactly 0 first, 1 last."""
        self.check_sampling(None, steps, grid)
        a = self.schedule.alpha(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).clamp(0.0, 1.0)
        a[0], a[-1] = 0.0, 1.0
        return a

    @torch.no_grad()
    def sample(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
               sampler: str | None = None, steps: int | None = None, grid: str | None = None,
               **options) -> DeletionSample:
        """``n`` sequences from the empty sequence at ``t = 1`` with ``sampler`` over ``steps`` steps; with
        ``seeds`` (one per sample) each sample depends on its seed alone."""
        plan = self.check_sampling(sampler, steps, grid, options)
        x = torch.full((n, self.max_len), self.pad_id, dtype=torch.long, device=self.device)
        length = torch.zeros(n, dtype=torch.long, device=self.device)
        with self.evaluating():
            return DELETION_SAMPLERS[plan.sampler](self.predict, x, length, self.alpha_grid(plan.steps, plan.grid),
                                                   self.pad_id, generator=self.sample_generators(seeds, generator),
                                                   **plan.options)

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: dict[str, TrainableModel] | None = None) -> "DeletionDiffusion":
        """Build for a ``kind="sequences"`` dataset: the network gets ``V + 2`` input ids (symbols, pad/END, BOS),
        ``V + 1`` outputs and ``seq_len = L + 1``."""
        from ..nn import NETWORKS, build_network

        if data.kind != "sequences" or data.vocab_size < 1:
            raise ValueError(f"family 'deletion' needs variable-length sequences (kind='sequences', e.g. "
                             f"data.name=text-sequences), got {data.name!r} of kind {data.kind!r}")
        method = dict(method_cfg)
        check_kwargs(cls, method, "method option for family 'deletion'",
                     exclude=("net", "vocab_size", "max_len", "itos"))
        model = dict(model_cfg)
        arch = model.pop("arch", "seq2seq")
        check_choice(arch, NETWORKS, "model.arch")
        if "encode" not in vars(NETWORKS[arch]):
            raise ValueError(f"family 'deletion' needs an encoder-decoder network (model.arch=seq2seq), got {arch!r}")
        max_len = data.shape[0]
        net = build_network(arch, {"vocab_size": data.vocab_size + 2, "seq_len": max_len + 1,
                                   "out_size": data.vocab_size + 1}, **model)
        return cls(net, data.vocab_size, max_len=max_len, itos=data.meta.get("itos"), **method)


DELETION_FAMILIES: dict[str, type[GenerativeModel]] = {"deletion": DeletionDiffusion}
