"""Anchors: surface normalisation across Ġ/▁/<0xNN>, deterministic order, persistence, alignment errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from der_ray.errors import VocabAlignmentError
from der_ray.fusion.anchors import (
    build_anchors,
    detect_scheme,
    load_anchors,
    load_or_build_anchors,
    normalised_vocab,
    save_anchors,
    surface_bytes,
)
from der_ray.types import VocabInfo

_BYTE_ALPHABET = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(0xA1, 0x180)]


def _vocab(tokens: list[str], special: tuple[int, ...] = ()) -> VocabInfo:
    return VocabInfo(tuple(tokens), special, None, (), None, len(tokens))


def _byte_level() -> VocabInfo:
    tokens = dict.fromkeys(["Ġhello", "Ċ", "Ġ", "ĠðŁĻĤ", "world", *_BYTE_ALPHABET])
    return _vocab(["<|endoftext|>", *tokens], (0,))


def _sentencepiece() -> VocabInfo:
    return _vocab(["<pad>", "<eos>", "▁hello", "<0x0A>", "\n", "▁", "world", "▁🙂", "<0x41>", "▁x"], (0, 1))


def test_surface_forms_meet():
    assert surface_bytes("Ġhello", "byte_level") == surface_bytes("▁hello", "sentencepiece") == b" hello"
    assert surface_bytes("Ċ", "byte_level") == surface_bytes("<0x0A>", "sentencepiece") == b"\n"
    assert surface_bytes("ĠðŁĻĤ", "byte_level") == " 🙂".encode()
    assert detect_scheme(_byte_level().tokens) == "byte_level"
    assert detect_scheme(_sentencepiece().tokens) == "sentencepiece"


def test_collisions_prefer_the_encoded_token_and_specials_never_anchor():
    sp = normalised_vocab(_sentencepiece())
    assert sp[b"\n"] == 4  # the literal "\n" piece, not the <0x0A> byte fallback
    assert b"<pad>" not in sp and b"<eos>" not in sp
    anchors = build_anchors([_byte_level(), _sentencepiece()], ["bl", "sp"])
    assert list(anchors.surfaces) == sorted(anchors.surfaces)
    assert {b" hello", b"\n", b" ", b"world", b" \xf0\x9f\x99\x82", b"A"} <= set(anchors.surfaces)
    j = anchors.surfaces.index(b" hello")
    assert (anchors.ids[0][j], anchors.ids[1][j]) == (1, 2)


def test_no_common_anchor_is_a_clear_error():
    with pytest.raises(VocabAlignmentError, match="share no token"):
        build_anchors([_vocab(["▁a", "▁b", "<0x0A>"]), _vocab(["ĠcĠ", "Ġd"])], ["x", "y"])


def test_persisted_atomically_and_reloaded(tmp_path):
    vocabs, names = [_byte_level(), _sentencepiece()], ["bl", "sp"]
    first = load_or_build_anchors(vocabs, names, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("anchors-") and files[0].suffix == ".json"
    mtime = files[0].stat().st_mtime_ns
    again = load_or_build_anchors(vocabs, names, tmp_path)
    assert again == first and files[0].stat().st_mtime_ns == mtime
    other = load_or_build_anchors(vocabs, ["bl", "sp2"], tmp_path)  # another member set: another key
    assert other.key != first.key and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(VocabAlignmentError, match="another ensemble"):
        load_anchors(files[0], expect_key=other.key)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"surfaces": ["41"], "ids": [[1, 2]], "names": ["a"], "key": "k"}))
    with pytest.raises(VocabAlignmentError, match="inconsistent"):
        load_anchors(bad)
    save_anchors(first, tmp_path / "sub" / "a.json")
    assert load_anchors(tmp_path / "sub" / "a.json") == first


def test_order_is_identical_across_processes_with_different_hash_seeds(tmp_path):
    here = os.path.dirname(__file__)
    code = (
        f"import sys; sys.path.insert(0, {here!r});"
        "from test_fusion_anchors import _byte_level, _sentencepiece;"
        "from der_ray.fusion.anchors import build_anchors, save_anchors;"
        "save_anchors(build_anchors([_byte_level(), _sentencepiece()], ['bl', 'sp']), sys.argv[1])"
    )
    outs = []
    for seed in ("1", "2"):
        path = tmp_path / f"a{seed}.json"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]
