"""Evaluate DeePEn fusion: every member alone vs the fusion of all members and of each pair.

Contract: ``evaluate_fusion(members, tasks)`` answers each task's dev and test rows and returns a
JSON-able summary; ``markdown(summary)`` renders it. Per task:
1. every member alone answers the dev and test rows (``SoloDecoder``: greedy over the member's own
   KV-cache session, the same step API and stop handling as ``FusionDecoder``'s main-only path);
2. the main member is the member with the highest dev accuracy (ties: pool order); a pair's main is
   whichever of its two members ranks higher on dev; weights are uniform (DeePEn-Avg) or, with
   ``weighting="adapt"``, proportional to the members' dev accuracy (DeePEn-Adapt stand-in);
3. with an ``lr_grid``, each fusion answers the dev rows at every inverse-search η of the grid and
   keeps the best (ties: the earlier grid value), as the paper tunes η on dev sets; otherwise η is
   the config's. The fusion of all members (and, with ``pairs``, of each pair) then answers the
   test rows at that η;
4. accuracy gets a 95% bootstrap interval, every fused-vs-member difference a 95% paired-bootstrap
   interval (same resampled questions).

Prompts: ``FusionDecoder`` gives every member the same prompt string and each member applies its own
prompt format, but chat and completion members must also receive different *messages*
(``tasks.generation_message``: an instruction for chat, the bare question for few-shot completion).
So members are wrapped by ``prompted``: the prompt string is a key into a shared ``PromptBook`` and
each wrapper opens its session with its own message for that key. Stop strings: a member alone uses
its own; a fusion uses the union of its members' (e.g. Gemma's ``"\\nQuestion:"``).
Multiple choice (ARC-Challenge) is answered by option likelihood, not generated letters (at chance
for these experts): ``fusion.options.OptionFusion`` scores each option under the fused next-token
distributions, and "a member alone" is the same scorer with one member.
Imports: core, data.schema, tasks, scoring, evals.stats, fusion.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from der_ray.data.schema import MULTIPLE_CHOICE, Example
from der_ray.errors import ConfigError
from der_ray.evals.stats import bootstrap_ci, paired_bootstrap
from der_ray.fusion.aggregate import weights_from_scores
from der_ray.fusion.decoder import FusionConfig, FusionDecoder, FusionResult
from der_ray.fusion.members import Member, member_tokenizer
from der_ray.fusion.options import OptionFusion
from der_ray.scoring import scorer_for
from der_ray.tasks import MAX_NEW_TOKENS, generation_message
from der_ray.types import FinishReason

SPLIT_FRACTIONS = {"dev": 0.2, "test": 0.8}
"""Fusion is training-free, so rows are split dev/test only (ARC-Challenge has 299 questions: the
routing split's 20% test part would hold 54 of them)."""


class PromptBook(dict[str, Example]):
    """Prompt keys -> examples; a key not in the book is passed to the member as the message itself."""

    def message(self, key: str, prompt_format: str) -> str:
        ex = self.get(key)
        return key if ex is None else generation_message(ex, prompt_format)


class _PromptedLocal:
    """An in-process expert whose ``open_session`` resolves the prompt key to its own message."""

    def __init__(self, obj: Any, prompt_format: str, book: PromptBook, name: str) -> None:
        self.obj, self.prompt_format, self.book, self.name = obj, prompt_format, book, name

    def open_session(self, prompt: str, **kwargs: Any) -> Any:
        return self.obj.open_session(self.book.message(prompt, self.prompt_format), **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.obj, attr)


class _PromptedRemote:
    """The same for a ``RemoteExpert`` (keeps ``submit``/``result`` so calls stay parallel)."""

    def __init__(self, obj: Any, prompt_format: str, book: PromptBook, name: str) -> None:
        self.obj, self.prompt_format, self.book, self.name = obj, prompt_format, book, name

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "open_session":
            args = (self.book.message(args[0], self.prompt_format), *args[1:])
        return self.obj.submit(method, *args, **kwargs)

    def result(self, ref: Any, timeout_s: float | None = None) -> Any:
        return self.obj.result(ref, timeout_s)

    def ready(self, ref: Any) -> bool:
        return bool(self.obj.ready(ref))


@dataclass(frozen=True)
class MemberSpec:
    """One pool member as the evaluation sees it."""

    name: str
    obj: Any
    """``HFExpert`` or ``RemoteExpert``."""
    prompt_format: str
    stop: tuple[str, ...] = ()


def prompted(spec: MemberSpec, book: PromptBook) -> Any:
    """``spec.obj`` wrapped so that prompt keys become this member's message (see module docstring)."""
    cls = type(spec.obj)
    remote = callable(getattr(cls, "submit", None)) and callable(getattr(cls, "result", None))
    return (_PromptedRemote if remote else _PromptedLocal)(spec.obj, spec.prompt_format, book, spec.name)


class SoloDecoder:
    """Greedy decoding of one member through its KV-cache session (``FusionDecoder``'s main-only path).

    Used as "the member alone" so that members and fusions share prompts, sessions and stop handling.
    """

    def __init__(self, obj: Any, *, name: str | None = None, top_k: int | None = 20) -> None:
        self.member = Member(obj, name=name)
        self.top_k = top_k
        vocab = self.member.call("vocabulary")
        self.n_tokens, self.eos = len(vocab.tokens), set(vocab.eos_ids)
        self.tokenizer = member_tokenizer(self.member)

    def generate(self, prompt: str, *, max_new_tokens: int = 64, stop: Sequence[str] = (),
                 apply_format: bool = True) -> FusionResult:
        t0 = time.perf_counter()
        m = self.member
        st = m.call("open_session", prompt, apply_format=apply_format, top_k=self.top_k)
        sid, n_prompt = st.session_id, st.n_tokens
        ids: list[int] = []
        finish: FinishReason = "length"
        try:
            for step in range(max_new_tokens):
                keep = st.dist.ids < self.n_tokens  # padding rows of the embedding matrix are no tokens
                token = int(st.dist.ids[keep][int(np.argmax(st.dist.logprobs[keep]))])
                ids.append(token)
                if token in self.eos:
                    finish = "stop"
                    break
                if stop and any(s in self._text(ids) for s in stop):
                    finish = "stop"
                    break
                if step + 1 < max_new_tokens:
                    st = m.call("append_tokens", sid, [token], top_k=self.top_k)
        finally:
            m.start("close_session", sid)
        text = self._text(ids)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        return FusionResult(text[:cut] if cut >= 0 else text, tuple(ids), finish, n_prompt, 0, 0, (),
                            time.perf_counter() - t0)

    def _text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode([i for i in ids if i not in self.eos], skip_special_tokens=True))


Decoder = SoloDecoder | FusionDecoder


@dataclass
class _Systems:
    """Decoders built once per member set and main member (anchors and relative rows are reused)."""

    specs: Sequence[MemberSpec]
    book: PromptBook
    config: FusionConfig
    cache: dict[tuple[tuple[str, ...], str, tuple[float, ...] | None], Decoder] = field(default_factory=dict)
    scorers: dict[tuple[tuple[str, ...], str, tuple[float, ...] | None], OptionFusion] = field(
        default_factory=dict)

    def get(self, names: tuple[str, ...], main: str, weights: tuple[float, ...] | None = None,
            lr: float | None = None) -> Decoder:
        """The decoder of a member set; ``lr`` overrides η of a fusion (same anchors and row caches)."""
        dec = self._decoder(names, main, weights)
        return dec.with_lr(lr) if lr is not None and isinstance(dec, FusionDecoder) else dec

    def _decoder(self, names: tuple[str, ...], main: str, weights: tuple[float, ...] | None) -> Decoder:
        key = (names, main, weights)
        if key not in self.cache:
            by_name = {s.name: s for s in self.specs}
            objs = [prompted(by_name[n], self.book) for n in names]
            if len(names) == 1:
                self.cache[key] = SoloDecoder(objs[0], name=names[0], top_k=self.config.top_k)
            else:
                config = dataclasses.replace(self.config, weights=weights)
                self.cache[key] = FusionDecoder(objs, main=main, config=config, names=list(names))
        return self.cache[key]

    def options(self, names: tuple[str, ...], main: str,
                weights: tuple[float, ...] | None = None) -> OptionFusion:
        """The multiple-choice scorer of a member set, built once (a fusion reuses the decoder's anchors
        and rows; a single member keeps one worker thread)."""
        key = (names, main, weights)
        if key not in self.scorers:
            if len(names) > 1:
                dec = self._decoder(names, main, weights)
                assert isinstance(dec, FusionDecoder)
                self.scorers[key] = OptionFusion.from_decoder(dec)
            else:
                by_name = {s.name: s for s in self.specs}
                self.scorers[key] = OptionFusion([prompted(by_name[names[0]], self.book)], names=list(names),
                                                 config=self.config)
        return self.scorers[key]

    def stops(self, names: Sequence[str]) -> tuple[str, ...]:
        by_name = {s.name: s for s in self.specs}
        return tuple(dict.fromkeys(s for n in names for s in by_name[n].stop))


def answer_rows(systems: _Systems, names: tuple[str, ...], main: str, examples: Sequence[Example], *,
                limits: dict[str, int], weights: tuple[float, ...] | None = None,
                lr: float | None = None) -> list[dict[str, Any]]:
    """Answers of the member set ``names`` (main ``main``, η ``lr`` or the config's) to ``examples``."""
    return answer_rows_by_lr(systems, names, main, examples, [lr], limits=limits, weights=weights)[0]


def answer_rows_by_lr(systems: _Systems, names: tuple[str, ...], main: str, examples: Sequence[Example],
                      lrs: Sequence[float | None], *, limits: dict[str, int],
                      weights: tuple[float, ...] | None = None) -> list[list[dict[str, Any]]]:
    """``answer_rows`` at each η of ``lrs`` (None: the config's), scored: greedy decoding (prompt =
    example id, one decode per η), or option likelihood for multiple choice (the members' forward
    passes shared by all η; "tokens" = scored positions, "n_searched" = fused positions)."""
    out: list[list[dict[str, Any]]] = [[] for _ in lrs]
    for ex in examples:
        if ex.answer_type == MULTIPLE_CHOICE:
            scorer = systems.options(names, main, weights)
            etas = [scorer.cfg.lr if lr is None else lr for lr in lrs]
            for rows, c in zip(out, scorer.choose_each(ex.question, ex.choices, etas), strict=True):
                rows.append({"id": ex.id, "text": ex.choices[c.index],
                             "score": float(c.index == ex.answer_index), "tokens": c.n_positions,
                             "latency_s": c.latency_s, "n_changed": 0, "n_searched": c.n_fused,
                             "degraded": [], "option_scores": list(c.scores)})
            continue
        for rows, lr in zip(out, lrs, strict=True):
            r = systems.get(names, main, weights, lr).generate(ex.id, max_new_tokens=limits[ex.answer_type],
                                                               stop=systems.stops(names))
            rows.append({"id": ex.id, "text": r.text, "score": float(scorer_for(ex).score(r.text, ex)),
                         "tokens": len(r.token_ids), "latency_s": r.latency_s, "n_changed": r.n_changed,
                         "n_searched": r.n_searched, "degraded": list(r.degraded)})
    return out


def _system_summary(rows: Sequence[dict[str, Any]], seed: int, **extra: Any) -> dict[str, Any]:
    acc = bootstrap_ci([r["score"] for r in rows], seed=seed)
    tokens = sum(r["tokens"] for r in rows)
    return {**extra, "n": len(rows), "accuracy": vars(acc),
            "mean_latency_s": float(np.mean([r["latency_s"] for r in rows])),
            "ms_per_token": 1000 * sum(r["latency_s"] for r in rows) / max(tokens, 1),
            "changed_tokens": sum(r["n_changed"] for r in rows),
            "searched_steps": sum(r["n_searched"] for r in rows), "tokens": tokens}


def evaluate_task(systems: _Systems, test: Sequence[Example], dev: Sequence[Example], *,
                  limits: dict[str, int], pairs: bool = True, seed: int = 0, weighting: str = "uniform",
                  lr_grid: Sequence[float] = (),
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One task: members alone (dev + test), main member by dev accuracy, η by fused dev accuracy
    (with ``lr_grid``), fusions (test), intervals.

    ``weighting``: "uniform" (DeePEn-Avg) or "adapt" (weights proportional to the members' dev
    accuracy on this task, ``aggregate.weights_from_scores``)."""
    say = progress or (lambda _msg: None)
    names = [s.name for s in systems.specs]
    dev_acc: dict[str, float] = {}
    members: dict[str, dict[str, Any]] = {}
    per_question: dict[str, list[dict[str, Any]]] = {}
    for n in names:
        say(f"member {n}: {len(dev)} dev + {len(test)} test")
        dev_rows = answer_rows(systems, (n,), n, dev, limits=limits) if dev else []
        dev_acc[n] = float(np.mean([r["score"] for r in dev_rows])) if dev_rows else 0.0
        per_question[n] = answer_rows(systems, (n,), n, test, limits=limits)
        members[n] = _system_summary(per_question[n], seed, dev_accuracy=dev_acc[n], n_dev=len(dev))
    rank = sorted(names, key=lambda n: (-dev_acc[n], names.index(n)))  # stable: ties keep pool order
    combos: dict[str, tuple[str, ...]] = {"all": tuple(names)} if len(names) > 1 else {}
    if pairs and len(names) > 2:
        combos.update({f"{a}+{b}": (a, b) for a, b in itertools.combinations(names, 2)})
    fused: dict[str, dict[str, Any]] = {}
    for label, combo in combos.items():
        main = min(combo, key=rank.index)
        weights = weights_from_scores([dev_acc[n] for n in combo]) if weighting == "adapt" else None
        lr, dev_by_lr = systems.config.lr, {}
        if lr_grid and dev:
            say(f"fusion {label}: choosing eta among {list(lr_grid)} on {len(dev)} dev")
            grid = answer_rows_by_lr(systems, combo, main, dev, list(lr_grid), limits=limits, weights=weights)
            dev_by_lr = {g: float(np.mean([r["score"] for r in rows])) for g, rows in zip(lr_grid, grid,
                                                                                           strict=True)}
            lr = max(lr_grid, key=lambda g: (dev_by_lr[g], -list(lr_grid).index(g)))
        say(f"fusion {label} (main {main}, eta {lr}, weights {weights or 'uniform'}): {len(test)} test")
        rows = answer_rows(systems, combo, main, test, limits=limits, weights=weights, lr=lr)
        per_question[f"fused:{label}"] = rows
        scores = [r["score"] for r in rows]
        vs = {n: vars(paired_bootstrap(scores, [r["score"] for r in per_question[n]], seed=seed))
              for n in names}
        fused[label] = _system_summary(rows, seed, members=list(combo), main=main, vs_members=vs,
                                       weights=list(weights) if weights else "uniform", lr=lr,
                                       dev_accuracy_by_lr={str(g): a for g, a in dev_by_lr.items()})
    best = max(names, key=lambda n: members[n]["accuracy"]["mean"])
    return {"main": rank[0], "dev_accuracy": dev_acc, "best_member_test": best, "n_test": len(test),
            "n_dev": len(dev), "members": members,
            "fused": {k: v for k, v in fused.items() if k == "all"},
            "pairs": {k: v for k, v in fused.items() if k != "all"}, "per_question": per_question}


def evaluate_fusion(specs: Sequence[MemberSpec], tasks: dict[str, tuple[list[Example], list[Example]]], *,
                    config: FusionConfig, max_new_tokens: dict[str, int] | None = None, pairs: bool = True,
                    seed: int = 0, weighting: str = "uniform", lr_grid: Sequence[float] = (),
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All tasks (``{task: (test, dev)}``); returns ``{"tasks": {task: ...}, "members": [...], ...}``.

    Raises:
        ConfigError: fewer than two members, an unknown ``weighting``, or a negative η in ``lr_grid``.
    """
    if len(specs) < 2:
        raise ConfigError(f"fusion needs at least two members, got {[s.name for s in specs]}")
    if weighting not in ("uniform", "adapt"):
        raise ConfigError(f"weighting must be uniform or adapt, got {weighting!r}")
    if any(not g >= 0 for g in lr_grid):
        raise ConfigError(f"lr_grid values must be >= 0, got {list(lr_grid)}")
    limits = {**MAX_NEW_TOKENS, **(max_new_tokens or {})}
    book = PromptBook({ex.id: ex for test, dev in tasks.values() for ex in [*test, *dev]})
    systems = _Systems(specs, book, config)
    say = progress or (lambda _msg: None)
    out: dict[str, Any] = {}
    for task, (test, dev) in tasks.items():
        t0 = time.perf_counter()

        def task_say(msg: str, t: str = task) -> None:
            say(f"[{t}] {msg}")

        out[task] = evaluate_task(systems, test, dev, limits=limits, pairs=pairs, seed=seed,
                                  weighting=weighting, lr_grid=lr_grid, progress=task_say)
        out[task]["wall_s"] = round(time.perf_counter() - t0, 1)
    return {"tasks": out, "members": [s.name for s in specs], "max_new_tokens": limits,
            "fusion_config": {k: v for k, v in vars(config).items() if k != "anchor_dir"},
            "weighting": weighting, "lr_grid": list(lr_grid),
            "member_decoding": "greedy over the member's own KV-cache session (SoloDecoder)"}


def _pct(iv: dict[str, float]) -> str:
    return f"{100 * iv['mean']:.1f} [{100 * iv['lo']:.1f}, {100 * iv['hi']:.1f}]"


def markdown(summary: dict[str, Any]) -> str:
    """Per task: accuracy table (members, fusion, pairs) and fused-minus-member differences."""
    out = []
    for task, t in summary["tasks"].items():
        names = list(t["members"])
        out += [f"## {task} (test n={t['n_test']}, dev n={t['n_dev']}, main member by dev: {t['main']})", "",
                "| system | main | accuracy % [95% CI] | dev acc % | ms/token | changed tokens |",
                "|---|---|---|---|---|---|"]
        for n, s in t["members"].items():
            out.append(f"| {n} (alone) | - | {_pct(s['accuracy'])} | {100 * s['dev_accuracy']:.1f} | "
                       f"{s['ms_per_token']:.0f} | - |")
        fused = {**t["fused"], **t["pairs"]}
        for label, s in fused.items():
            by_lr = s.get("dev_accuracy_by_lr") or {}
            dev_acc = f"{100 * by_lr[str(s['lr'])]:.1f}" if str(s.get("lr")) in by_lr else "-"
            out.append(f"| fused {label} | {s['main']}, η={s.get('lr')} | {_pct(s['accuracy'])} | "
                       f"{dev_acc} | {s['ms_per_token']:.0f} | {s['changed_tokens']}/{s['tokens']} |")
        if fused:
            out += ["", "Fused minus member, accuracy points [95% paired bootstrap]:", "",
                    "| fused | " + " | ".join(f"− {n}" for n in names) + " |",
                    "|---|" + "---|" * len(names)]
            for label, s in fused.items():
                out.append(f"| {label} | " + " | ".join(_pct(s["vs_members"][n]) for n in names) + " |")
        out.append("")
    return "\n".join(out)
