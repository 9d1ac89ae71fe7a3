"""Multiple choice by option likelihood under DeePEn-fused next-token distributions.

Generated letters are at chance for the default experts, option likelihood is not
(``expert-skills.md``), so fused multiple choice scores each option text as a continuation of the
cloze context (``tasks.cloze_context``, as ``HFExpert.score_options`` does) under the *fused*
distribution, and picks the option with the highest mean log-probability per main-member token.

Contract: ``OptionFusion(members, main=..., config=...)`` (or ``OptionFusion.from_decoder`` to reuse a
``FusionDecoder``'s anchors and relative rows) and ``choose(question, choices) -> OptionChoice``.
Per option, every member teacher-forces the continuation in its own tokenisation in one batched call
(``continuation_dists``). At each main-member position j (predicting main token j):
1. candidates = the main member's top-k there plus the true token (so its probability exists);
2. members whose own token boundaries include the main member's byte boundary at j contribute
   their distribution there in relative space (top-k plus their own next token of the option, the
   same support rule as the candidates); a member inside one of its tokens at that
   boundary sits the position out (the decoder's "incomplete character" rule, applied to tokens);
3. with another member present, the weighted average is inverted onto the candidates
   (``inverse_search``, same hyperparameters as decoding); else the main member's logits stand;
4. the position's score is ``log_softmax(z)`` of the true token over the candidates.
A single member therefore gets its own likelihood renormalised over its top-k plus the true token,
which is what "member alone" means in the evaluation (the same restriction as the fusions), and with
``top_k`` = vocabulary size it equals ``score_options``. Imports: core, tasks, fusion.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from der_ray.errors import ConfigError, InvalidRequestError
from der_ray.fusion.aggregate import aggregate
from der_ray.fusion.decoder import FusionConfig, FusionDecoder
from der_ray.fusion.inverse import inverse_search
from der_ray.fusion.members import Member, gather
from der_ray.fusion.relative import relative_vector
from der_ray.tasks import cloze_context
from der_ray.types import ContinuationDists


@dataclass(frozen=True)
class OptionChoice:
    index: int
    scores: tuple[float, ...]
    """Mean fused log-probability per main-member token, one per option."""
    n_positions: int
    """Main-member positions scored over all options."""
    n_fused: int
    """Positions where at least one other member contributed (the inverse search ran)."""
    latency_s: float


def continuation(context: str, option: str) -> str:
    """``" " + option`` unless either side already has the space (``HFExpert.score_options``'s rule)."""
    return option if context[-1].isspace() or option[:1].isspace() else " " + option


class OptionFusion:
    """Fused (or single-member) option likelihood; see the module docstring."""

    def __init__(self, members: Sequence[Any], *, main: int | str = 0, config: FusionConfig | None = None,
                 names: Sequence[str] | None = None) -> None:
        if len(members) == 1:
            self.cfg = config or FusionConfig()
            self.decoder: FusionDecoder | None = None
            self.members = [Member(members[0], name=names[0] if names else None,
                                   timeout_s=self.cfg.member_timeout_s)]
            self.main = 0
            self.weights: tuple[float, ...] = (1.0,)
        else:
            self._adopt(FusionDecoder(members, main=main, config=config, names=names))

    @classmethod
    def from_decoder(cls, decoder: FusionDecoder) -> OptionFusion:
        self = cls.__new__(cls)
        self._adopt(decoder)
        return self

    def _adopt(self, decoder: FusionDecoder) -> None:
        self.cfg, self.decoder, self.members = decoder.cfg, decoder, decoder.members
        self.main, self.weights = decoder.main, decoder.weights

    def choose(self, question: str, choices: Sequence[str]) -> OptionChoice:
        """Score every option; raises ``InvalidRequestError`` for no or empty options."""
        return self.choose_each(question, choices, [self.cfg.lr])[0]

    def choose_each(self, question: str, choices: Sequence[str], lrs: Sequence[float]) -> list[OptionChoice]:
        """``choose`` at each inverse-search η of ``lrs``; the members' forward passes run once."""
        if not lrs or any(not lr >= 0 for lr in lrs):
            raise ConfigError(f"inverse-search learning rates must be >= 0, got {list(lrs)}")
        if not choices or any(not c or not c.strip() for c in choices):
            raise InvalidRequestError("multiple choice needs non-empty options")
        if self.cfg.top_k is None:
            raise ConfigError("fused option likelihood needs a finite fusion.top_k")
        t0 = time.perf_counter()
        context = cloze_context(question)
        conts = [continuation(context, c) for c in choices]
        dists = gather(self.members, [m.start("continuation_dists", [context] * len(conts), conts,
                                              top_k=self.cfg.top_k) for m in self.members])
        for r in dists:
            if isinstance(r, BaseException):
                raise r
        forward_s = time.perf_counter() - t0
        out = []
        for lr in lrs:
            t_lr = time.perf_counter()  # each choice's latency: the shared forward passes + its own fusion
            scores, n_pos, n_fused = [], 0, 0
            for o in range(len(conts)):
                lps, fused = self._option_logprobs([d[o] for d in dists], lr)
                scores.append(float(np.mean(lps)))
                n_pos, n_fused = n_pos + len(lps), n_fused + fused
            out.append(OptionChoice(int(np.argmax(scores)), tuple(scores), n_pos, n_fused,
                                    forward_s + time.perf_counter() - t_lr))
        return out

    def _option_logprobs(self, dists: Sequence[ContinuationDists], lr: float) -> tuple[list[float], int]:
        main = dists[self.main]
        n_real = len(self.decoder.vocabs[self.main].tokens) if self.decoder else None
        # member -> {byte boundary: position predicted from it}; position 0 starts at boundary 0
        starts = [{0: 0, **{int(e): j + 1 for j, e in enumerate(d.byte_ends[:-1])}} for d in dists]
        plan = []
        for j in range(len(main.ids)):
            boundary = 0 if j == 0 else int(main.byte_ends[j - 1])
            cand = [int(i) for i in main.top_ids[j] if n_real is None or i < n_real]
            target = int(main.ids[j])
            if target not in cand:
                cand.append(target)
            others = {i: starts[i][boundary] for i in range(len(dists))
                      if i != self.main and boundary in starts[i]}
            plan.append((j, cand, target, others))
        rows = self._rows(dists, plan)
        out, fused = [], 0
        for j, cand, target, others in plan:
            lp = {int(i): float(v) for i, v in zip(main.top_ids[j], main.top_logprobs[j], strict=True)}
            lp[target] = float(main.target_logprobs[j])
            z = torch.tensor([lp[i] for i in cand], dtype=torch.float64)  # (k',)
            if others and lr > 1e-6 and self.decoder is not None:
                members = [self.main, *others]
                vectors = [relative_vector(z, rows[self.main](cand))]
                for i, pos in others.items():
                    ids, logprobs = _with_own_token(dists[i], pos)
                    vectors.append(relative_vector(torch.tensor(logprobs), rows[i](ids)))
                w = np.array([self.weights[i] for i in members])
                target_vec = aggregate(torch.stack(vectors), list(w / w.sum()))  # (A,)
                z = inverse_search(z, rows[self.main](cand), target_vec, lr=lr, steps=self.cfg.steps,
                                   weight_decay=self.cfg.weight_decay, t_max=self.cfg.t_max,
                                   eta_min_ratio=self.cfg.eta_min_ratio).double()
                fused += 1
            out.append(float(torch.log_softmax(z, dim=-1)[cand.index(target)]))
        return out, fused

    def _rows(self, dists: Sequence[ContinuationDists], plan: list[Any]) -> dict[int, Any]:
        """Per member, a function ids -> (len(ids), A) relative rows. The embeddings of every id the
        option needs are fetched first, in parallel across members (cheap: a few MB), so rows that the
        LRU cache evicts meanwhile are simply recomputed."""
        if self.decoder is None:
            return {}
        dec = self.decoder
        want: dict[int, list[int]] = {self.main: []}
        for _, cand, _, others in plan:
            if not others:
                continue
            want[self.main] += cand
            for i, pos in others.items():
                want.setdefault(i, []).extend(_with_own_token(dists[i], pos)[0])
        distinct = {i: list(dict.fromkeys(ids)) for i, ids in want.items()}
        embs = gather(self.members, [self.members[i].start("input_embeddings", distinct[i])
                                     if distinct.get(i) else None for i in range(len(self.members))])
        for e in embs:
            if isinstance(e, BaseException):
                raise e
        by_id = {i: dict(zip(distinct[i], np.asarray(embs[i]), strict=True)) for i in distinct if distinct[i]}

        def rows_of(i: int) -> Any:
            def take(ids: list[int]) -> torch.Tensor:
                miss = dec.rows[i].missing(ids)
                emb = np.stack([by_id[i][t] for t in miss]) if miss else None
                return dec.rows[i].take(ids, miss, emb)
            return take

        return {i: rows_of(i) for i in distinct}


def _with_own_token(d: ContinuationDists, pos: int) -> tuple[list[int], np.ndarray]:
    """A member's top-k at ``pos`` plus the token it takes there, so that every member's distribution
    has the same support rule as the main member's candidates (a self-ensemble then changes nothing)."""
    ids = [int(t) for t in d.top_ids[pos]]
    if int(d.ids[pos]) in ids:
        return ids, d.top_logprobs[pos]
    return [*ids, int(d.ids[pos])], np.append(d.top_logprobs[pos], d.target_logprobs[pos])
