"""Moving text between tokenizers: the main member's ids become text, the text becomes other members' ids.

Contract:
- ``Detokenizer`` turns the main member's generated ids into text incrementally (vLLM's prefix/read
  offsets): decoding a short window after the prompt keeps SentencePiece's leading-space rule and
  byte tokens right, and text ending in an incomplete UTF-8 character (a byte token of a split emoji)
  is held back until the character is complete. Never a literal ``<0x0A>`` or ``Ġ``.
- ``TextFeeder`` keeps another member's ids for the same text. On new text it re-tokenises only the
  unstable tail: the text from a token boundary ``tail_tokens`` tokens back, encoded after a few
  context tokens and cut at the context's own encoding (so merges across the boundary and the
  SentencePiece dummy prefix land in the context, not in the tail). If the context does not
  tokenise stably or the tail does not decode back to the text, it retries from an earlier
  boundary. It returns ``(n_keep, new_ids)``: keep that many ids (the KV cache is rewound to there)
  and append the new ones; usually nothing is rewound.
The official code appends ``convert_ids_to_tokens`` strings instead (spec §1.5): that leaks ``<0x0A>``,
breaks split characters and re-prefills every step. Imports: stdlib (tokenizers are passed in).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Detokenizer:
    """Incremental decoding of generated ids after a prompt (``context_ids``: the prompt's last ids)."""

    def __init__(self, tokenizer: Any, context_ids: Sequence[int], *, window: int = 6) -> None:
        self.tokenizer = tokenizer
        self._all = [int(i) for i in context_ids]
        self.n_context = len(self._all)
        self._prefix = max(0, self.n_context - window)
        self._read = self.n_context
        self.text = ""

    @property
    def ids(self) -> list[int]:
        return self._all[self.n_context:]

    @property
    def pending(self) -> bool:
        """Whether the last ids have not become text yet (an incomplete character, a special token)."""
        return self._read < len(self._all)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes ("" while a character is incomplete)."""
        self._all.append(int(token_id))
        dec = self.tokenizer.decode
        prefix_text = dec(self._all[self._prefix:self._read], skip_special_tokens=True)
        new_text = dec(self._all[self._prefix:], skip_special_tokens=True)
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(self._all)
        self.text += delta
        return delta


class TextFeeder:
    """Keeps one member's token ids in step with a growing text (see the module docstring).

    It is built from the last prompt ids of the member's session: the first ``pre_tokens`` of them
    are fixed context; the rest (the *window*) may be re-tokenised together with the generated text,
    since a merge can cross the prompt boundary (``Answer:`` + `` The`` -> ``Answer:▁`` in a
    SentencePiece without whitespace splitting). Positions returned by ``update`` count from the
    start of the window: the session position is ``n_prompt - window_len + n_keep``.
    """

    def __init__(self, tokenizer: Any, prompt_tail: Sequence[int], *, pre_tokens: int = 2,
                 tail_tokens: int = 2, context_tokens: int = 4) -> None:
        tail = [int(i) for i in prompt_tail]
        if len(tail) <= pre_tokens:
            pre_tokens = max(0, len(tail) - 1)
        self.tokenizer = tokenizer
        self.pre = tail[:pre_tokens]
        self.tail_tokens = tail_tokens
        self.context_tokens = context_tokens
        self.ids: list[int] = tail[pre_tokens:]
        self.window_len = len(self.ids)
        """Prompt tokens that ``update`` may re-tokenise (its positions count from their start)."""
        base = tokenizer.decode(self.pre, skip_special_tokens=False)
        self.prompt_text = tokenizer.decode(self.pre + self.ids, skip_special_tokens=False)[len(base):]
        # bounds[i]: char offset where ids[i] starts (None: inside a character); window tokens other
        # than the first are boundaries only where decoding says so
        self.bounds: list[int | None] = self._bounds(self.pre, self.ids, 0, self.prompt_text)
        self.text = self.prompt_text
        self.rewound = 0  # ids dropped from the member's cache so far (a diagnostic)

    def update(self, generated: str) -> tuple[int, list[int]]:
        """Move to prompt text + ``generated``; returns ``(n_keep, new_ids)`` counted from the window."""
        text = self.prompt_text + generated
        if text == self.text:
            return len(self.ids), []
        common = _common_prefix(self.text, text)
        j = self._boundary_at_or_before(max(0, len(self.ids) - self.tail_tokens), common)
        while True:
            region, bounds = self._encode_tail(j, text)
            if region is not None or j == 0:
                break
            j = self._boundary_at_or_before(j - 1, common)
        if region is None:  # even the fixed context merges with the window: encode on its own
            log.warning("feeder: the prompt context merges with the text; encoding the text alone")
            region = self.tokenizer.encode(text, add_special_tokens=False)
            bounds = self._bounds(self.pre, region, 0, text)
        new = self.ids[:j] + region
        n_keep = _common_prefix(self.ids, new)
        self.rewound += len(self.ids) - n_keep
        self.ids, self.bounds, self.text = new, self.bounds[:j + 1] + bounds[1:], text
        return n_keep, new[n_keep:]

    def _boundary_at_or_before(self, j: int, limit: int) -> int:
        while j > 0 and (self.bounds[j] is None or self.bounds[j] > limit):  # type: ignore[operator]
            j -= 1
        return max(j, 0)

    def _context(self, j: int) -> list[int]:
        full = self.pre + self.ids[:j]
        end = len(self.pre) + j
        return full[max(0, end - self.context_tokens):end]

    def _encode_tail(self, j: int, text: str) -> tuple[list[int] | None, list[int | None]]:
        """Ids for ``text[bounds[j]:]`` in the context of the tokens before ``j`` (None: unstable)."""
        start = self.bounds[j]
        assert start is not None
        seg = text[start:]
        ctx_ids = self._context(j)
        tok = self.tokenizer
        ctx_text = tok.decode(ctx_ids, skip_special_tokens=False)
        enc_ctx = tok.encode(ctx_text, add_special_tokens=False) if ctx_ids else []
        enc_all = tok.encode(ctx_text + seg, add_special_tokens=False)
        if enc_all[:len(enc_ctx)] != enc_ctx:
            return None, []
        region = enc_all[len(enc_ctx):]
        if tok.decode(ctx_ids + region, skip_special_tokens=False)[len(ctx_text):] != seg:
            if j > 0:
                return None, []
            log.warning("feeder: %r does not round-trip through this tokenizer (unknown characters?)", seg)
        return region, self._bounds(ctx_ids, region, start, seg)

    def _bounds(self, ctx_ids: list[int], region: list[int], start: int, seg: str) -> list[int | None]:
        """Char offsets (in the text) where each token of ``region`` starts, plus the end."""
        tok = self.tokenizer
        base = tok.decode(ctx_ids, skip_special_tokens=False)
        out: list[int | None] = [start]
        for i in range(1, len(region) + 1):
            t = tok.decode(ctx_ids + region[:i], skip_special_tokens=False)
            piece = t[len(base):] if t.startswith(base) else None
            clean = piece is not None and not piece.endswith(_REPLACEMENT) and seg.startswith(piece)
            out.append(start + len(piece) if clean and piece is not None else None)
        if out[-1] is None:  # the end of a decodable text is always a boundary
            out[-1] = start + len(seg)
        return out
