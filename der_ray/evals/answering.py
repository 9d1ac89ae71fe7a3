"""Answer dataset examples with one expert and score the answers.

How each answer type is asked lives in ``der_ray.tasks`` (shared with routing).

Work is planned as a list of batched ``Request``s, so that the same plan runs on a local
``HFExpert`` or is submitted to an expert actor all at once (actors then work in parallel).
Imports: core, data.schema, tasks, scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from der_ray.data.schema import MULTIPLE_CHOICE, Example
from der_ray.scoring import get_scorer, scorer_for
from der_ray.tasks import MAX_NEW_TOKENS, cloze_context, generation_message


@dataclass(frozen=True)
class Request:
    """One batched call: ``method`` on the expert with these arguments, covering ``indices``."""

    method: Literal["generate", "score_options"]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Answer:
    example_id: str
    domain: str
    expert: str
    text: str
    score: float
    method: str
    completion_tokens: int
    latency_s: float
    finish_reason: str = "stop"
    """``length`` when a generated answer hit its token budget (likelihood answers: ``stop``)."""


def plan(examples: Sequence[Example], prompt_format: str, *, batch_size: int = 8,
         max_new_tokens: dict[str, int] | None = None,
         mc_mode: Literal["likelihood", "letter"] = "likelihood") -> list[Request]:
    """Group examples into batched requests by how they are answered."""
    limits = {**MAX_NEW_TOKENS, **(max_new_tokens or {})}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, ex in enumerate(examples):
        kind = "cloze" if ex.answer_type == MULTIPLE_CHOICE and mc_mode == "likelihood" else ex.answer_type
        groups.setdefault((kind, ex.answer_type), []).append(i)
    requests = []
    for (kind, answer_type), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = tuple(idx[start:start + batch_size])
            if kind == "cloze":
                contexts = [cloze_context(examples[i].question) for i in chunk]
                options = [list(examples[i].choices) for i in chunk]
                requests.append(Request("score_options", (contexts, options), {}, chunk))
            else:
                msgs = [generation_message(examples[i], prompt_format) for i in chunk]
                requests.append(Request("generate", (msgs,), {"max_new_tokens": limits[answer_type]}, chunk))
    return requests


def run_local(expert: Any, requests: Sequence[Request]) -> list[Any]:
    """Execute a plan on an in-process expert (``HFExpert``)."""
    return [getattr(expert, r.method)(*r.args, **r.kwargs) for r in requests]


def submit(remote: Any, requests: Sequence[Request]) -> list[Any]:
    """Submit a whole plan to an expert actor (``RemoteExpert``); returns ObjectRefs in order."""
    return [remote.submit(r.method, *r.args, **r.kwargs) for r in requests]


def collect(expert_name: str, examples: Sequence[Example], requests: Sequence[Request],
            results: Sequence[Any], *, mc_mode: str = "likelihood") -> list[Answer]:
    """Turn request results into scored ``Answer``s, in the examples' order."""
    answers: dict[int, Answer] = {}
    option_scorer = get_scorer("mc_option")
    for req, res in zip(requests, results, strict=True):
        for i, out in zip(req.indices, res, strict=True):
            ex = examples[i]
            if req.method == "score_options":
                text = ex.choices[out.best]
                answers[i] = Answer(ex.id, ex.domain, expert_name, text, option_scorer.score(text, ex),
                                    "likelihood", 0, 0.0)
            else:
                scorer = get_scorer("mc_letter") if ex.answer_type == MULTIPLE_CHOICE else scorer_for(ex)
                answers[i] = Answer(ex.id, ex.domain, expert_name, out.text, scorer.score(out.text, ex),
                                    "generate", out.completion_tokens, out.latency_s / len(req.indices),
                                    out.finish_reason)
    return [answers[i] for i in range(len(examples))]


def evaluate_pool(pool: Any, examples: Sequence[Example], *, batch_size: int = 8,
                  max_new_tokens: dict[str, int] | None = None,
                  mc_mode: Literal["likelihood", "letter"] = "likelihood") -> list[Answer]:
    """Answer ``examples`` with every started expert of an ``ExpertPool``, experts in parallel.

    Every expert's whole plan is submitted before any result is awaited, so each actor works through
    its own queue while the others do the same.
    """
    plans, refs = {}, {}
    for name, remote in pool.experts.items():
        fmt = pool.cfg.expert(name).prompt.format
        plans[name] = plan(examples, fmt, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           mc_mode=mc_mode)
        refs[name] = submit(remote, plans[name])
    answers: list[Answer] = []
    for name, remote in pool.experts.items():
        results = [remote.result(r) for r in refs[name]]
        answers += collect(name, examples, plans[name], results, mc_mode=mc_mode)
    return answers
