"""One expert call of a routing episode: what is sent (question or Knowledge Transfer Prompt) and
how the reply becomes an answer. Shared by the environment, the cache precompute job and the
inference ``Router``, so training and inference ask exactly the same thing.

Step 0 sends the question in the expert's own prompt format (``der_ray.tasks``). Later steps send
the KTP: the question plus the previous answer only, as in the official code, with the paper's
wording by default (``RouterConfig.ktp_template``). Multiple choice is answered by option likelihood:
the options are scored as continuations of ``Question: <question or KTP>\\nAnswer:``, and the chosen
option's text is the answer the next expert sees. Imports: core, data.schema, tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from der_ray.config import RouterConfig
from der_ray.data.schema import MULTIPLE_CHOICE, Example
from der_ray.tasks import cloze_context, generation_message


@dataclass(frozen=True)
class Call:
    """A single-item expert call: ``getattr(expert, method)(*args, **kwargs)``."""

    method: Literal["generate", "score_options"]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """What one expert call produced, as the routing episode needs it."""

    text: str
    completion_tokens: int
    latency_s: float


def message(ex: Example, prompt_format: str, prev_answer: str | None, cfg: RouterConfig) -> str:
    """The user message of a step: the question at step 0, the KTP afterwards."""
    question = generation_message(ex, prompt_format) if ex.answer_type != MULTIPLE_CHOICE else ex.question
    if prev_answer is None:
        return question
    return cfg.ktp_template.format(question=question, answer=prev_answer.strip() or "(empty answer)")


def expert_call(ex: Example, prompt_format: str, prev_answer: str | None, cfg: RouterConfig) -> Call:
    """The call that answers ``ex`` at a step whose previous answer is ``prev_answer``."""
    msg = message(ex, prompt_format, prev_answer, cfg)
    if ex.answer_type == MULTIPLE_CHOICE:
        return Call("score_options", ([cloze_context(msg)], [list(ex.choices)]))
    budget = cfg.max_new_tokens.get(ex.answer_type, 128)
    return Call("generate", ([msg],), {"max_new_tokens": budget, "temperature": 0.0})


def reply_from(ex: Example, call: Call, result: Any) -> Reply:
    """Turn the raw result of ``call`` (a one-item list) into a ``Reply``."""
    out = result[0]
    if call.method == "score_options":
        return Reply(ex.choices[out.best], 0, 0.0)
    return Reply(out.text, out.completion_tokens, out.latency_s)
