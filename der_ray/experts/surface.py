"""Token surface forms as bytes: what a vocabulary entry stands for, whatever its tokenizer's convention.

- byte-level BPE (GPT-2 alphabet: ``Ġ`` = space, ``Ċ`` = newline, ``Ã©`` = two UTF-8 bytes) is
  mapped back through the byte alphabet;
- SentencePiece ``▁`` is a space and ``<0xNN>`` byte-fallback pieces are that byte;
- anything else (added tokens, plain vocabularies) is its UTF-8 encoding.
Used by fusion anchors (tokens of different vocabularies meet on these bytes) and by
``HFExpert.continuation_dists`` (token boundaries in bytes). Imports: stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

Scheme = Literal["byte_level", "sentencepiece", "plain"]

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet for the 256 bytes, inverted (char -> byte)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def detect_scheme(tokens: Sequence[str]) -> Scheme:
    """Which surface convention a vocabulary uses (GaC's prefix count, plus the byte alphabet)."""
    n_sp = sum(t.startswith("▁") for t in tokens)
    n_bl = sum(t.startswith("Ġ") for t in tokens)
    if n_sp > n_bl:
        return "sentencepiece"
    alphabet = _byte_decoder()
    if n_bl > 0 and sum(t in alphabet for t in set(tokens)) >= 200:
        return "byte_level"
    return "plain"


def surface_bytes(token: str, scheme: Scheme) -> bytes:
    """The bytes a token stands for under ``scheme`` (see the module docstring)."""
    if scheme == "sentencepiece":
        m = BYTE_PIECE.fullmatch(token)
        return bytes([int(m.group(1), 16)]) if m else token.replace("▁", " ").encode("utf-8")
    if scheme == "byte_level":
        dec = _byte_decoder()
        if all(c in dec for c in token):
            return bytes(dec[c] for c in token)
    return token.encode("utf-8")
