"""How a dataset example is put to an expert: the message, the budget, and the multiple-choice form.

Shared by evaluation and routing so that both ask the same question the same way. Measured on the
default experts (``expert-skills.md``): multiple choice is answered by option likelihood ("cloze":
each option as a continuation of ``Question: ...\\nAnswer:``), since generated letters are at chance;
numeric (GSM8K) gets a bounded chain of thought ending in "The answer is N."; short answers a few
tokens. Chat experts receive an instruction; completion (base) experts the bare question inside
their few-shot format, since instructions mostly confuse base models. Imports: data.schema.
"""

from __future__ import annotations

from der_ray.data.schema import FREE_TEXT, MULTIPLE_CHOICE, NUMERIC, SHORT_ANSWER, Example

MAX_NEW_TOKENS = {NUMERIC: 256, SHORT_ANSWER: 16, FREE_TEXT: 128, MULTIPLE_CHOICE: 4}
INSTRUCTIONS = {
    NUMERIC: "{question}\nSolve it step by step, briefly, and finish with 'The answer is N.'",
    SHORT_ANSWER: "Answer with a short phrase only, no explanation.\nQuestion: {question}",
    FREE_TEXT: "{question}",
    MULTIPLE_CHOICE: "{question}\n{options}\nAnswer with the letter of the correct option only.",
}
LETTERS = "ABCDEFGHIJ"


def generation_message(ex: Example, prompt_format: str) -> str:
    """The user message for a generative answer (chat experts get an instruction)."""
    if prompt_format != "chat" and ex.answer_type != MULTIPLE_CHOICE:
        return ex.question
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(ex.choices))
    return INSTRUCTIONS.get(ex.answer_type, "{question}").format(question=ex.question, options=options)


def cloze_context(question: str) -> str:
    """The context whose continuations are the options (evaluation-harness style)."""
    return f"Question: {question}\nAnswer:"
