"""Turn a user message into one expert's prompt text. Pure: stdlib + core + a tokenizer object.

Chat experts use their tokenizer's chat template (the template already holds BOS and role tokens, so
the formatted text is encoded without adding special tokens, as ``apply_chat_template`` does).
Completion experts (base models such as Gemma-3-270M) get a few-shot ``Question:/Answer:`` text and
rely on stop strings; their text is encoded *with* special tokens so that BOS is present.
"""

from __future__ import annotations

from typing import Any

from der_ray.config import PromptConfig
from der_ray.errors import ConfigError, InvalidRequestError


class PromptFormatter:
    """Formats messages for one expert; ``tokenizer`` needs ``apply_chat_template`` for chat."""

    def __init__(self, cfg: PromptConfig, tokenizer: Any, expert: str = "") -> None:
        if cfg.format == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"expert {expert!r}: prompt.format is 'chat' but the tokenizer has no chat template; "
                "use prompt.format: completion with few_shot examples and stop strings"
            )
        self.cfg = cfg
        self.tokenizer = tokenizer
        self._shots = cfg.separator.join(
            cfg.template.format(question=s.question) + s.answer for s in cfg.few_shot
        )

    @property
    def stop(self) -> tuple[str, ...]:
        return self.cfg.stop

    @property
    def add_special_tokens(self) -> bool:
        """Whether encoding the formatted text should add the tokenizer's special tokens."""
        return self.cfg.format != "chat"

    def format(self, message: str) -> str:
        """The full prompt for ``message`` (a question, or a Knowledge Transfer Prompt)."""
        if not message or not message.strip():
            raise InvalidRequestError("empty prompt: the message must contain non-whitespace text")
        if self.cfg.format == "chat":
            turns = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
            turns.append({"role": "user", "content": message})
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return str(text)
        question = self.cfg.template.format(question=message)
        return f"{self._shots}{self.cfg.separator}{question}" if self._shots else question
