"""Anchor tokens: the vocabulary entries every member of an ensemble shares, after surface normalisation.

Contract: ``build_anchors(vocabs, names)`` returns an ``AnchorSet`` whose anchors are sorted by their
normalised bytes (deterministic across processes, unlike the official code's ``set`` order) and
hold one token id per member; ``load_or_build_anchors`` persists it as JSON keyed by a hash of the
member names and tokenizers, written atomically. No common anchor raises ``VocabAlignmentError``.

Normalisation maps every token to the *bytes it stands for*, so tokens from different schemes meet:
- byte-level BPE (GPT-2 alphabet: ``Ġ`` = space, ``Ċ`` = newline, ``Ã©`` = two UTF-8 bytes) is
  mapped back through the byte alphabet;
- SentencePiece ``▁`` is a space and ``<0xNN>`` byte-fallback pieces are that byte;
- anything else (added tokens, plain vocabularies) is its UTF-8 encoding.
So ``Ġhello`` and ``▁hello`` match, and so do ``Ċ`` and ``<0x0A>`` (the official code only rewrites
Ġ→▁; this is the issue's stricter requirement). Special tokens never anchor: equal strings do not mean
equal roles. When two tokens of one vocabulary normalise to the same bytes (Gemma has both ``\\n`` and
``<0x0A>``) the one the tokenizer produces when encoding wins: not a byte-fallback piece, then the lowest id.
Imports: stdlib, numpy, core.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from der_ray.errors import VocabAlignmentError
from der_ray.experts.surface import BYTE_PIECE, Scheme, detect_scheme, surface_bytes
from der_ray.types import VocabInfo

NORMALISER_VERSION = 1
"""Bump when ``surface_bytes`` changes: persisted anchor files of older versions are rebuilt."""


def normalised_vocab(vocab: VocabInfo, scheme: Scheme | None = None) -> dict[bytes, int]:
    """Normalised bytes -> token id over the non-special tokens (collisions resolved as documented)."""
    scheme = scheme or detect_scheme(vocab.tokens)
    special = set(vocab.special_ids)
    out: dict[bytes, int] = {}
    fallback: dict[bytes, bool] = {}
    for i, tok in enumerate(vocab.tokens):
        if i in special or not tok:
            continue
        key = surface_bytes(tok, scheme)
        if not key:
            continue
        is_fb = scheme == "sentencepiece" and BYTE_PIECE.fullmatch(tok) is not None
        if key not in out or (fallback[key] and not is_fb):
            out[key], fallback[key] = i, is_fb
    return out


def vocab_fingerprint(vocab: VocabInfo) -> str:
    """A hash of everything about a vocabulary that anchors depend on."""
    h = hashlib.sha256()
    h.update(f"{len(vocab.tokens)}:{vocab.model_vocab_size}:{list(vocab.special_ids)}\n".encode())
    for tok in vocab.tokens:
        h.update(tok.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class AnchorSet:
    """The common anchors of an ensemble: ``ids[m][j]`` is anchor ``j``'s token id in member ``m``."""

    surfaces: tuple[bytes, ...]
    """Normalised bytes of each anchor, sorted ascending."""
    ids: tuple[tuple[int, ...], ...]
    """Per member (in ``names`` order), the anchor token ids, aligned with ``surfaces``."""
    names: tuple[str, ...]
    key: str
    """sha256 of the member names, their vocabulary fingerprints and the normaliser version."""

    def __len__(self) -> int:
        return len(self.surfaces)

    def member_ids(self, member: int) -> np.ndarray:
        return np.asarray(self.ids[member], dtype=np.int64)  # (A,)


def anchor_key(vocabs: Sequence[VocabInfo], names: Sequence[str]) -> str:
    h = hashlib.sha256(f"der_ray.anchors.v{NORMALISER_VERSION}\n".encode())
    for name, vocab in zip(names, vocabs, strict=True):
        h.update(f"{name}\t{vocab_fingerprint(vocab)}\n".encode())
    return h.hexdigest()


def build_anchors(vocabs: Sequence[VocabInfo], names: Sequence[str]) -> AnchorSet:
    """The exact intersection of the members' normalised vocabularies, sorted by bytes.

    Raises:
        VocabAlignmentError: fewer than one member, mismatched names, or no common anchor.
    """
    if not vocabs or len(vocabs) != len(names):
        raise VocabAlignmentError(f"need one name per vocabulary, got {len(names)} names for "
                                  f"{len(vocabs)} vocabularies")
    maps = [normalised_vocab(v) for v in vocabs]
    common = sorted(set.intersection(*(set(m) for m in maps)))
    if not common:
        sizes = ", ".join(f"{n}: {len(m)} tokens ({detect_scheme(v.tokens)})"
                          for n, m, v in zip(names, maps, vocabs, strict=True))
        raise VocabAlignmentError(f"members {list(names)} share no token after normalising surface forms "
                                  f"({sizes}); DeePEn fusion needs common anchor tokens")
    ids = tuple(tuple(m[s] for s in common) for m in maps)
    return AnchorSet(tuple(common), ids, tuple(names), anchor_key(vocabs, names))


def save_anchors(anchors: AnchorSet, path: str | os.PathLike[str]) -> Path:
    """Write ``anchors`` as JSON atomically (temporary file in the same directory, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": NORMALISER_VERSION, "key": anchors.key, "names": list(anchors.names),
           "surfaces": [s.hex() for s in anchors.surfaces], "ids": [list(i) for i in anchors.ids]}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_anchors(path: str | os.PathLike[str], *, expect_key: str | None = None) -> AnchorSet:
    """Read an anchor file; raises ``VocabAlignmentError`` when it is malformed or for other members."""
    try:
        doc = json.loads(Path(path).read_text())
        anchors = AnchorSet(tuple(bytes.fromhex(s) for s in doc["surfaces"]),
                            tuple(tuple(int(i) for i in row) for row in doc["ids"]),
                            tuple(doc["names"]), str(doc["key"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VocabAlignmentError(f"cannot read anchor file {path}: {e}") from e
    if expect_key is not None and anchors.key != expect_key:
        raise VocabAlignmentError(f"anchor file {path} belongs to another ensemble or tokenizer version")
    if any(len(row) != len(anchors.surfaces) for row in anchors.ids):
        raise VocabAlignmentError(f"anchor file {path} is inconsistent (ids and surfaces differ in length)")
    return anchors


def load_or_build_anchors(vocabs: Sequence[VocabInfo], names: Sequence[str],
                          cache_dir: str | os.PathLike[str] | None = None) -> AnchorSet:
    """The persisted anchors of this ensemble, built and saved on first use (no cache dir: built only)."""
    if cache_dir is None:
        return build_anchors(vocabs, names)
    key = anchor_key(vocabs, names)
    path = Path(cache_dir) / f"anchors-{key[:24]}.json"
    if path.is_file():
        return load_anchors(path, expect_key=key)
    anchors = build_anchors(vocabs, names)
    save_anchors(anchors, path)
    return anchors
