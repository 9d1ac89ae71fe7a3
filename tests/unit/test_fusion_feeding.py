"""Text between the two tiny tokenizers (Ġ/byte-level and ▁/<0xNN>): newlines, bytes, emoji round-trip."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from der_ray.fusion.feeding import Detokenizer, TextFeeder

PROMPT = "Question: What is it?\nAnswer:"
TEXTS = [" The answer is 7.\nQuestion: next\n\n  ok", " Héllo wörld 🙂 done\n", " 3 + 4 = 7. #### 72 🎉🎉\tx",
         "\n\nHi", " <0x0A> is literal here"]


@pytest.fixture(scope="module")
def toks(tiny_dirs):
    return {f: AutoTokenizer.from_pretrained(d) for f, d in tiny_dirs.items()}


@pytest.mark.parametrize("src,dst", [("byte_bpe", "sentencepiece"), ("sentencepiece", "byte_bpe"),
                                     ("sentencepiece", "sentencepiece")])
@pytest.mark.parametrize("text", TEXTS)
def test_text_delta_feeding_round_trips(toks, src, dst, text):
    ts, td = toks[src], toks[dst]
    main_prompt = ts.encode(PROMPT)
    det = Detokenizer(ts, main_prompt)
    gen = ts.encode(text, add_special_tokens=False)  # what a main model could emit after its prompt
    member_prompt = td.encode(PROMPT)
    feeder = TextFeeder(td, member_prompt[-8:])
    session = list(member_prompt)  # what the member's KV cache holds
    for t in gen:
        before = det.text
        delta = det.push(t)
        assert det.text == before + delta and "\ufffd" not in det.text
        if delta:
            n_keep, new = feeder.update(det.text)
            pos = len(member_prompt) - feeder.window_len + n_keep
            assert pos <= len(session)
            session = session[:pos] + new
    assert det.text.strip() == text.strip() and not det.pending
    # the member sees exactly the text, tokenised as it would tokenise prompt + text in one go
    assert session == td.encode(PROMPT + det.text)
    assert td.decode(session, skip_special_tokens=True).endswith(det.text)
    if "<0x0A>" not in text:
        assert "<0x" not in td.decode(session, skip_special_tokens=True)
        assert "<0x" not in det.text and "Ġ" not in det.text and "▁" not in det.text


def test_split_characters_are_held_back(toks):
    ts = toks["sentencepiece"]  # an emoji is 4 <0xNN> byte-fallback tokens here
    ids = ts.encode("🙂", add_special_tokens=False)
    pieces = ts.convert_ids_to_tokens(ids)
    assert sum(p.startswith("<0x") for p in pieces) == 4
    det = Detokenizer(ts, ts.encode("Answer:"))
    deltas = [det.push(i) for i in ids]
    assert "".join(deltas).strip() == "🙂" and deltas[-1].strip() == "🙂"
    assert all(d == "" for d, p in zip(deltas[:-1], pieces, strict=False) if p.startswith("<0x"))
    assert not det.pending


def test_feeder_rewinds_only_what_changed(toks):
    td = toks["byte_bpe"]
    feeder = TextFeeder(td, td.encode(PROMPT)[-8:])
    n0, first = feeder.update(" The")
    assert n0 == feeder.window_len
    n1, more = feeder.update(" The answer")
    assert n1 == n0 + len(first) and td.decode(more) == " answer"
    assert feeder.update(" The answer") == (len(feeder.ids), [])
