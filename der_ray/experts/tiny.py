"""Tiny, randomly initialised Hugging Face experts with *different* vocabularies, built offline.

Used by unit tests, dry runs and the later issues' tests (Tune sweeps, Serve apps, fusion): they load
through exactly the same code path as the real experts (a local model directory), in well under a
second, without any download. Two families are provided:

- ``byte_bpe``: a GPT-2 style byte-level BPE (``Ġ`` for spaces, every byte a token) with a ChatML chat
  template, on a Llama architecture;
- ``sentencepiece``: a SentencePiece-style BPE (``▁`` for spaces, ``<0xNN>`` byte fallback) without a
  chat template (a completion model), on a Gemma-3 text architecture (transformers picks the
  tokenizer class from the model type; Gemma's keeps this SentencePiece pipeline intact).

Weights are seeded, so a given (family, seed) always yields the same model. Imports: torch,
transformers, tokenizers (lazily, inside the builders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Family = Literal["byte_bpe", "sentencepiece"]

_CORPUS = [
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.",
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\n"
    "Answer: 3 + 4 = 7. The answer is 7.",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.",
    "Natalia sold 48 clips in April and half as many in May. 48 / 2 = 24 and 48 + 24 = 72. #### 72",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Which gas do plants absorb? (A) oxygen (B) carbon dioxide (C) helium (D) neon. The answer is B.",
    "Water boils at 100 degrees Celsius at sea level; ice melts at 0 degrees.",
] * 4

_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_bpe_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = _CHATML
    return fast


def _sentencepiece_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Train a plain BPE over "▁"-joined text, then rebuild it with byte fallback: the <0xNN> pieces
    # must be ordinary (non-special) tokens so that decoding turns them back into bytes.
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = norm
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    base.train_from_iterator([line.replace("\n", " ") for line in _CORPUS], trainer=trainer)
    vocab = dict(base.get_vocab())
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    raw = json.loads(base.to_str())["model"]["merges"]  # "a b" strings or [a, b] pairs by version
    merges = [(str(a), str(b)) for a, b in (m.split(" ", 1) if isinstance(m, str) else m for m in raw)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                            special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def build_tiny_expert(out_dir: str | Path, family: Family = "byte_bpe", *, seed: int = 0,
                      vocab_size: int = 400, hidden: int = 32, layers: int = 2) -> Path:
    """Write a tiny random causal LM plus tokenizer to ``out_dir``; return the directory.

    Args:
        out_dir: target directory (created).
        family: ``byte_bpe`` (Llama + ChatML) or ``sentencepiece`` (Gemma-3, completion only).
        seed: weight-initialisation seed.
        vocab_size: BPE training target (the byte-fallback family adds 256 byte tokens on top).
    """
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family == "byte_bpe":
        tok = _byte_bpe_tokenizer(vocab_size)
        cfg_cls, model_cls = LlamaConfig, LlamaForCausalLM
        extra: dict[str, Any] = {}
    elif family == "sentencepiece":
        tok = _sentencepiece_tokenizer(vocab_size)
        cfg_cls, model_cls = Gemma3TextConfig, Gemma3ForCausalLM  # type: ignore[assignment]
        extra = {"head_dim": hidden // 4, "sliding_window": 64}
    else:
        raise ValueError(f"unknown tiny family {family!r}; valid: byte_bpe, sentencepiece")
    cfg = cfg_cls(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():  # larger-than-default init so that greedy outputs vary with the prompt
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
