"""DeePEn decoding: members step in lock-step, the main member emits each token after the inverse search.

Contract: ``FusionDecoder(members, main=..., config=FusionConfig(...)).generate(prompt, ...)`` returns a
``FusionResult``. Members are anything with the expert step API (``HFExpert`` locally,
``RemoteExpert`` for actors; see ``members``). Per step:
1. each member's top-k next-token distribution (from its KV-cache session) is mapped to anchor space
   (``relative``), rows of unseen ids are computed from embeddings fetched in parallel;
2. the weighted average (``aggregate``) is inverted onto the main member's top-k candidates
   (``inverse``; skipped for greedy decoding when no candidate can overtake the top-1);
3. the token is the argmax (greedy) or a sample from ``softmax(z_T / temperature)`` drawn with a
   ``torch.Generator`` seeded by ``seed``;
4. the main member (and members with the same tokenizer) get the token id; the others get the new
   text through a ``TextFeeder`` (only the unstable tail is re-tokenised; the KV cache is rewound
   only if a merge changed earlier ids). The decoder waits only for the main member unless the next
   step needs the others (it is not main-only, below); a member that falls behind catches up on all
   the text it missed in one call (``FusionConfig.feed``: in parallel, or only when needed).
Main-only steps (the main member's own distribution decides): η <= 1e-6, greedy decoding where no
candidate can overtake the top-1, the main member's argmax is EOS (official rule), or the main member
is inside an incomplete character (the other members have not seen it yet). Stops at EOS, a stop
string (cut from the text) or ``max_new_tokens``.
A member that times out or whose actor died raises ``ExpertTimeoutError``/``ExpertUnavailableError``;
with ``on_member_timeout="degrade"`` a non-main member is instead dropped for the rest of the request,
its weight redistributed, a warning logged and its name listed in ``FusionResult.degraded``.
Imports: core, runtime, fusion.*, torch.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from der_ray.errors import ConfigError, ExpertTimeoutError, ExpertUnavailableError, InvalidRequestError
from der_ray.fusion.aggregate import aggregate, reweight_without, validate_weights
from der_ray.fusion.anchors import AnchorSet, load_or_build_anchors, vocab_fingerprint
from der_ray.fusion.feeding import Detokenizer, TextFeeder
from der_ray.fusion.inverse import can_flip, inverse_search
from der_ray.fusion.members import Member, Pending, gather, member_tokenizer
from der_ray.fusion.relative import RelativeRows, relative_vector
from der_ray.runtime import release_freed_heap
from der_ray.types import FinishReason, TokenDist, VocabInfo

log = logging.getLogger(__name__)

PROMPT_TAIL = 8
"""Prompt ids each feeder reads (its fixed context plus the window it may re-tokenise)."""


@dataclass(frozen=True)
class FusionConfig:
    """DeePEn knobs; defaults are the official code's (README NQ command for η)."""

    top_k: int | None = 20
    """Tokens per member per step (candidates of the main member too); None = whole vocabulary (dense)."""
    temperature: float = 100.0
    """Multiplier inside the relative-representation softmax (the paper's 100)."""
    lr: float = 0.15
    """η of the inverse search; <= 1e-6 disables fusion (main member only)."""
    steps: int = 5
    weight_decay: float = 0.01
    t_max: int = 10
    eta_min_ratio: float = 0.25
    weights: tuple[float, ...] | None = None
    """One weight per member, summing to 1 within ``weight_tol``; None = uniform (DeePEn-Avg)."""
    weight_tol: float = 1e-6
    skip_when_safe: bool = True
    """Greedy only: skip the search when the main member's top-1 gap exceeds ``inverse.flip_threshold``."""
    on_member_timeout: Literal["raise", "degrade"] = "raise"
    member_timeout_s: float | None = None
    """Per call; None = each remote member's own timeout."""
    feed: Literal["parallel", "lazy"] = "parallel"
    """How the other members follow the main member's text. ``parallel``: each step they advance
    alongside the main member, but the decoder waits for them only when the step needs their
    distributions; one still busy with earlier text gets everything it missed in one call once free.
    ``lazy`` (greedy decoding with ``skip_when_safe`` only; otherwise as ``parallel``): they advance only
    when a step needs them, catching up in one call: fewest forward passes, and the lowest latency on
    shared cores when the main member is the cheap one."""
    reuse_ids: bool = True
    """Members whose tokenizer equals the main member's receive its token ids instead of text."""
    tail_tokens: int = 2
    row_cache_mb: float = 256.0
    anchor_dtype: Literal["float32", "float16"] = "float16"
    """Storage of each member's unit anchor embeddings on the coordinator (39k anchors x d: 220 MB in
    float32 for SmolLM2 + Qwen, 110 MB in float16). float16 moves relative vectors by ~2e-5 in L1 and
    left 40 of 40 fused TriviaQA answers unchanged; float32 is the exact method (the dense test)."""
    anchor_dir: str | None = None
    """Where anchor sets are persisted (None: rebuilt per decoder)."""

    def __post_init__(self) -> None:
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"fusion.top_k must be a positive integer or null, got {self.top_k!r}")
        if not self.temperature > 0:
            raise ConfigError(f"fusion.temperature must be > 0, got {self.temperature!r}")
        if not self.lr >= 0 or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"fusion.lr must be >= 0 and fusion.steps a non-negative integer, "
                              f"got {self.lr!r}, {self.steps!r}")
        if self.feed not in ("parallel", "lazy"):
            raise ConfigError(f"fusion.feed must be parallel or lazy, got {self.feed!r}")
        if self.on_member_timeout not in ("raise", "degrade"):
            raise ConfigError("fusion.on_member_timeout must be raise or degrade, "
                              f"got {self.on_member_timeout!r}")
        if self.anchor_dtype not in ("float32", "float16"):
            raise ConfigError(f"fusion.anchor_dtype must be float32 or float16, got {self.anchor_dtype!r}")
        if self.tail_tokens < 1 or self.row_cache_mb <= 0:
            raise ConfigError("fusion.tail_tokens must be >= 1 and fusion.row_cache_mb > 0")


@dataclass(frozen=True)
class FusionResult:
    text: str
    """The main member's decoded tokens (as ``HFExpert.generate`` decodes), cut before a stop string."""
    token_ids: tuple[int, ...]
    """Ids emitted in the main member's vocabulary (EOS included when it ended the text)."""
    finish_reason: FinishReason
    prompt_tokens: int
    n_searched: int
    """Steps that ran the inverse search."""
    n_changed: int
    """Steps where fusion chose another token than the main member's argmax."""
    degraded: tuple[str, ...]
    latency_s: float
    member_steps: tuple[int, ...] = ()
    """Forward calls per member (prompt included): fewer than tokens + 1 for a member that caught up
    on several tokens at once."""


class FusionDecoder:
    """Token-level DeePEn fusion over members exposing the step API (see the module docstring)."""

    def __init__(self, members: Sequence[Any], *, main: int | str = 0, config: FusionConfig | None = None,
                 names: Sequence[str] | None = None) -> None:
        if not members:
            raise ConfigError("fusion needs at least one member")
        self.cfg = config or FusionConfig()
        self.members = [Member(m, name=names[i] if names else None, timeout_s=self.cfg.member_timeout_s)
                        for i, m in enumerate(members)]
        names_ = [m.name for m in self.members]
        index = names_.index(main) if isinstance(main, str) and main in names_ else main
        if not isinstance(index, int) or not 0 <= index < len(self.members):
            raise ConfigError(f"fusion.main must be a member index or one of {names_}, got {main!r}")
        self.main: int = index
        self.weights = validate_weights(self.cfg.weights, len(self.members), tol=self.cfg.weight_tol)
        self.vocabs: list[VocabInfo] = self._all("vocabulary")
        self.anchors: AnchorSet = load_or_build_anchors(self.vocabs, names_, self.cfg.anchor_dir)
        prints = [vocab_fingerprint(v) for v in self.vocabs]
        self.same_as_main = [self.cfg.reuse_ids and p == prints[self.main] for p in prints]
        self.tokenizers = [member_tokenizer(m) if i == self.main or not self.same_as_main[i] else None
                           for i, m in enumerate(self.members)]
        release_freed_heap()  # building tokenizers and vocabularies left ~70 MB of freed heap
        self.rows = [RelativeRows(m.embeddings(self.anchors.ids[i]), temperature=self.cfg.temperature,
                                  cache_mb=self.cfg.row_cache_mb, own=True,
                                  dtype=getattr(torch, self.cfg.anchor_dtype))
                     for i, m in enumerate(self.members)]

    def with_config(self, **changes: Any) -> FusionDecoder:
        """The same decoder (members, anchors, relative-row caches) with per-request settings changed
        (η, feeding schedule, ...); settings that shape the anchors or rows need a new decoder."""
        other = copy.copy(self)
        other.cfg = dataclasses.replace(self.cfg, **changes)
        return other

    def with_lr(self, lr: float) -> FusionDecoder:
        """Another inverse-search η, for choosing η on dev rows as the paper does without rebuilding."""
        return self.with_config(lr=lr)

    def fork(self) -> FusionDecoder:
        """Another decoder over the same members, anchors and tokenizers with its own relative-row
        caches: a decoder serves one request at a time, and concurrent requests each need one."""
        other = copy.copy(self)
        other.rows = [r.fresh() for r in self.rows]
        return other

    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        out = gather(self.members, [m.start(method, *args, **kwargs) for m in self.members])
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out

    # ---------------------------------------------------------------- decoding
    def generate(self, prompt: str, *, max_new_tokens: int = 64, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int | None = None,
                 apply_format: bool = True, on_text: Callable[[str], None] | None = None) -> FusionResult:
        """Fused decoding of one prompt (each member formats it with its own prompt format).

        ``on_text``, when given, is called after every emitted token with the text decoded so far
        (streaming; it may still end in part of a stop string, which ``FusionResult.text`` cuts).

        Raises:
            InvalidRequestError: bad ``max_new_tokens``, ``temperature`` or an empty stop string.
            ExpertTimeoutError / ExpertUnavailableError: a member failed (see ``on_member_timeout``).
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise InvalidRequestError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not temperature >= 0 or any(not s for s in stop):
            raise InvalidRequestError("temperature must be >= 0 and stop strings non-empty")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        t0 = time.perf_counter()
        run = _Run(self, temperature, gen)
        try:
            run.open(prompt, apply_format)
            return run.decode(max_new_tokens, tuple(stop), t0, on_text)
        finally:
            run.close()


class _Run:
    """The state of one ``generate`` call: sessions, feeders, current distributions, statistics."""

    def __init__(self, dec: FusionDecoder, temperature: float, gen: torch.Generator | None) -> None:
        self.d, self.cfg, self.temperature, self.gen = dec, dec.cfg, temperature, gen
        self.n = len(dec.members)
        self.active = list(range(self.n))
        self.weights = dec.weights
        self.sids: list[str | None] = [None] * self.n
        self.n_prompt = [0] * self.n
        self.dists: list[TokenDist | None] = [None] * self.n
        self.feeders: list[TextFeeder | None] = [None] * self.n
        # Members whose KV session lags the emitted text, the ids the id-fed ones have not got yet,
        # and each member's call in flight (its answer is collected only when a step needs it).
        self.behind: set[int] = set()
        self.unsent: list[list[int]] = [[] for _ in range(self.n)]
        self.inflight: list[Pending | None] = [None] * self.n
        self.lazy = self.cfg.feed == "lazy" and temperature == 0 and self.cfg.skip_when_safe
        self.degraded: list[str] = []
        self.n_searched = self.n_changed = 0
        self.steps = [0] * self.n

    def _gather(self, pendings: list[Pending | None]) -> list[Any]:
        """Results per member; failures raise or, by policy, drop the member (never silently)."""
        out = gather(self.d.members, pendings)
        for i, r in enumerate(out):
            if not isinstance(r, BaseException):
                continue
            degradable = isinstance(r, ExpertTimeoutError | ExpertUnavailableError)
            if i == self.d.main or self.cfg.on_member_timeout != "degrade" or not degradable:
                raise r
            name = self.d.members[i].name
            log.warning("fusion: dropping member %r for the rest of this request: %s", name, r)
            self.active.remove(i)
            self.weights = reweight_without(self.weights, [j for j in range(self.n) if j not in self.active])
            self.degraded.append(name)
            self.sids[i] = None
            out[i] = None
        return out

    def open(self, prompt: str, apply_format: bool) -> None:
        ms, k = self.d.members, self.cfg.top_k
        states = self._gather([m.start("open_session", prompt, apply_format=apply_format, top_k=k)
                               for m in ms])
        for i, st in enumerate(states):
            if st is not None:
                self.sids[i], self.n_prompt[i], self.dists[i] = st.session_id, st.n_tokens, st.dist
                self.steps[i] += 1
        need = [i for i in self.active if i == self.d.main or not self.d.same_as_main[i]]
        tails = self._gather([ms[i].start("session_token_ids", self.sids[i], last=PROMPT_TAIL)
                              if i in need else None for i in range(self.n)])
        main = self.d.main
        self.detok = Detokenizer(self.d.tokenizers[main], tails[main])
        for i in need:
            if i != main and tails[i] is not None:
                self.feeders[i] = TextFeeder(self.d.tokenizers[i], tails[i], tail_tokens=self.cfg.tail_tokens)

    def close(self) -> None:
        for i in self.active:
            if self.sids[i] is not None:
                self.d.members[i].start("close_session", self.sids[i])  # fire and forget

    def decode(self, max_new_tokens: int, stop: tuple[str, ...], t0: float,
               on_text: Callable[[str], None] | None = None) -> FusionResult:
        main = self.d.main
        eos = set(self.d.vocabs[main].eos_ids)
        ids: list[int] = []
        finish: FinishReason = "length"
        for step in range(max_new_tokens):
            token = self._choose(eos)
            ids.append(token)
            if token in eos:
                finish = "stop"
                break
            if self.detok.push(token) and on_text is not None:
                on_text(self.detok.text)
            if any(s in self.detok.text for s in stop):
                finish = "stop"
                break
            if step + 1 < max_new_tokens:
                self._feed(token)
        tok = self.d.tokenizers[main]
        assert tok is not None
        text = tok.decode([i for i in ids if i not in eos], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        return FusionResult(text[:cut] if cut >= 0 else text, tuple(ids), finish, self.n_prompt[main],
                            self.n_searched, self.n_changed, tuple(self.degraded), time.perf_counter() - t0,
                            tuple(self.steps))

    def _choose(self, eos: set[int]) -> int:
        main = self.d.main
        dist = self.dists[main]
        assert dist is not None
        n_tokens = len(self.d.vocabs[main].tokens)
        keep = dist.ids < n_tokens  # padding rows of the embedding matrix are no tokens
        cand = torch.tensor(dist.ids[keep])  # (k,)
        z0 = torch.tensor(dist.logprobs[keep]).float()  # (k,)
        top = int(cand[int(torch.argmax(z0))])
        greedy = self.temperature == 0
        main_only = (self.cfg.lr <= 1e-6 or top in eos or self.detok.pending or len(self.active) == 1
                     or (greedy and self.cfg.skip_when_safe and not can_flip(
                         z0, lr=self.cfg.lr, steps=self.cfg.steps, weight_decay=self.cfg.weight_decay,
                         t_max=self.cfg.t_max, eta_min_ratio=self.cfg.eta_min_ratio)))
        z = z0
        if not main_only:
            self._catch_up(self.active)  # lagging members catch up before their distributions are read
            rows = self._rows()
            vectors = torch.stack([relative_vector(torch.tensor(self._dist(i)[1]), rows[i])
                                   for i in self.active])  # (N_active, A)
            target = aggregate(vectors, [self.weights[i] for i in self.active])  # (A,)
            z = inverse_search(z0, rows[main], target, lr=self.cfg.lr, steps=self.cfg.steps,
                               weight_decay=self.cfg.weight_decay, t_max=self.cfg.t_max,
                               eta_min_ratio=self.cfg.eta_min_ratio)  # (k,)
            self.n_searched += 1
        if greedy:
            token = int(cand[int(torch.argmax(z))])
        else:
            probs = torch.softmax(z / self.temperature, dim=-1)  # (k,)
            token = int(cand[int(torch.multinomial(probs, 1, generator=self.gen))])
        self.n_changed += int(token != top)
        return token

    def _dist(self, i: int) -> tuple[list[int], Any]:
        """Member ``i``'s (ids, logprobs); the main member's are restricted to real tokens."""
        dist = self.dists[i]
        assert dist is not None
        if i != self.d.main:
            return dist.ids.tolist(), dist.logprobs
        keep = dist.ids < len(self.d.vocabs[i].tokens)
        return dist.ids[keep].tolist(), dist.logprobs[keep]

    def _rows(self) -> dict[int, torch.Tensor]:
        """Relative rows of every active member's current ids, fetching missing embeddings in parallel."""
        want = {i: self._dist(i)[0] for i in self.active}
        miss = {i: self.d.rows[i].missing(ids) for i, ids in want.items()}
        pend = [self.d.members[i].start("input_embeddings", miss[i]) if miss.get(i) else None
                for i in range(self.n)]
        embs = self._gather(pend)
        return {i: self.d.rows[i].take(want[i], miss[i], embs[i]) for i in self.active if i in want}

    def _feed(self, token: int) -> None:
        """Record the chosen token for every active member and advance them (see ``FusionConfig.feed``).

        Only the main member is waited for: the others' answers are collected when a step needs them.
        """
        main = self.d.main
        for i in self.active:
            self.unsent[i].append(token)
            self.behind.add(i)
        start = [main]
        if not self.lazy:  # members still busy with earlier text get all they missed when free
            free = [i for i in self.active if i != main and self._idle(i)]
            self._finish(free)
            start += free
        self._submit(start)
        self._finish([main])

    def _idle(self, i: int) -> bool:
        """Whether member ``i`` has no call in flight, or only a finished one."""
        pending = self.inflight[i]
        return pending is None or self.d.members[i].ready(pending)

    def _catch_up(self, members: Sequence[int]) -> None:
        """Bring the members' sessions and distributions up to all the emitted text."""
        self._finish(members)
        self._submit(members)
        self._finish(members)

    def _submit(self, members: Sequence[int]) -> None:
        """Start feeding each given member that lags the text (ids or text delta) what it lacks."""
        k = self.cfg.top_k
        for i in members:
            if i not in self.behind or i not in self.active:
                continue
            m, sid, feeder = self.d.members[i], self.sids[i], self.feeders[i]
            assert self.inflight[i] is None  # one call per member at a time: sessions are ordered
            if feeder is None:
                self.inflight[i] = m.start("append_tokens", sid, self.unsent[i], top_k=k)
            else:
                n_keep, new = feeder.update(self.detok.text)
                if new or n_keep < len(feeder.ids):
                    pos = self.n_prompt[i] - feeder.window_len + n_keep
                    self.inflight[i] = m.start("replace_tokens", sid, pos, new, top_k=k)
            if self.inflight[i] is not None:
                self.steps[i] += 1
            self.unsent[i] = []
            self.behind.discard(i)

    def _finish(self, members: Sequence[int]) -> None:
        """Wait for the given members' calls in flight and keep their new distributions."""
        pend = [self.inflight[i] if i in members else None for i in range(self.n)]
        for i in members:
            self.inflight[i] = None
        for i, st in enumerate(self._gather(pend)):
            if st is not None and i in self.active:
                self.dists[i] = st.dist
