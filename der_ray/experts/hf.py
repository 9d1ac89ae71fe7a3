"""``HFExpert``: one transformers causal LM behind der_ray's expert API. Plain class, no Ray.

API (all batched where it matters; every method validates its input and raises typed errors):
- ``generate(prompts, max_new_tokens, temperature, stop, seed)`` -> ``list[Generation]``
- ``score_options(contexts, options)`` -> ``list[OptionScores]`` (multiple choice as "cloze")
- ``open_session / append_tokens / append_text / close_session`` -> ``StepState`` (KV-cache steps);
  ``replace_tokens / truncate_session / session_token_ids`` rewind and inspect a session
- ``vocabulary()``, ``input_embeddings(ids)``, ``tokenizer_files()``, ``health()``

``der_ray.experts.actors`` turns this class into a Ray actor; tests and dry runs use it directly.
Imports: core, experts.{loading,prompts,sessions}; torch/transformers at construction time.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from der_ray.config import ExpertConfig
from der_ray.errors import InvalidRequestError
from der_ray.experts.loading import load_tokenizer_and_model, pick_device, resolve_source
from der_ray.experts.prompts import PromptFormatter
from der_ray.experts.sessions import SessionStore, to_dist
from der_ray.experts.surface import detect_scheme, surface_bytes
from der_ray.types import ContinuationDists, ExpertHealth, Generation, OptionScores, StepState, VocabInfo


class HFExpert:
    """A Hugging Face causal LM expert configured by an ``ExpertConfig``."""

    def __init__(self, cfg: ExpertConfig, *, cache_dir: str | None = None, device: str | None = None,
                 prepare: bool = True, max_sessions: int = 64) -> None:
        import torch

        torch.set_num_threads(cfg.resources.threads)
        self.cfg = cfg
        self.name = cfg.name
        self.device = pick_device(device)
        self.model_dir = resolve_source(cfg, cache_dir, prepare=prepare)
        t0 = time.perf_counter()
        self.tokenizer, self.model = load_tokenizer_and_model(cfg, self.model_dir, self.device)
        self.load_s = time.perf_counter() - t0
        self.formatter = PromptFormatter(cfg.prompt, self.tokenizer, cfg.name)
        self.sessions = SessionStore(self.model, self.device, max_sessions=max_sessions)
        self.eos_ids = self._eos_ids()
        self._scheme: Any = None  # tokenizer surface convention, detected on first use

    # ---------------------------------------------------------------- generation
    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None,
                 temperature: float | None = None, stop: Sequence[str] | None = None,
                 seed: int | None = None, *, top_p: float | None = None,
                 apply_format: bool = True, ignore_eos: bool = False) -> list[Generation]:
        """Generate one answer per prompt in a single left-padded batch.

        Args:
            prompts: user messages (formatted with the expert's prompt format) or, with
                ``apply_format=False``, raw prompt texts.
            max_new_tokens / temperature / top_p: default from the expert's generation config;
                ``temperature == 0`` is greedy.
            stop: extra stop strings (the expert's own, e.g. ``"\\nQuestion:"``, always apply).
            seed: seeds sampling, so the same call returns the same text.
            ignore_eos: generate exactly ``max_new_tokens`` unless a stop string ends the text
                (throughput benchmarks need a fixed length).
        Raises:
            InvalidRequestError: empty prompt list or prompt, ``max_new_tokens <= 0``, bad temperature.
        """
        import torch
        from transformers import GenerationConfig

        gen = self.cfg.generation
        n_new = gen.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = gen.temperature if temperature is None else temperature
        nucleus = gen.top_p if top_p is None else top_p
        _check_generation_args(n_new, temp, nucleus)
        texts, add_special = self._prompt_texts(prompts, apply_format)
        stops = tuple(dict.fromkeys((*self.formatter.stop, *(stop or ()))))
        if any(not s for s in stops):
            raise InvalidRequestError("stop strings must be non-empty")

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=add_special).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        criteria = _StopStrings(self.tokenizer, stops, prompt_len, len(texts))
        config = GenerationConfig(
            max_new_tokens=n_new, do_sample=temp > 0, temperature=temp if temp > 0 else None,
            top_p=nucleus if temp > 0 else None, top_k=None, eos_token_id=list(self.eos_ids),
            min_new_tokens=n_new if ignore_eos else None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if seed is not None:
            torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=config, stopping_criteria=[criteria])
        latency = time.perf_counter() - t0
        new_tokens = out[:, prompt_len:].tolist()
        prompt_counts = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, ids in enumerate(new_tokens):
            end = len(ids) if ignore_eos else next(
                (i + 1 for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
            hit = criteria.stopped_at[row]
            end = min(end, hit) if hit else end
            text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            finished = end < len(ids) or bool(hit) or (len(ids) > 0 and ids[end - 1] in self.eos_ids)
            results.append(Generation(
                text=text[:cut] if cut >= 0 else text, prompt_tokens=int(prompt_counts[row]),
                completion_tokens=end, finish_reason="stop" if finished or cut >= 0 else "length",
                latency_s=latency, expert=self.name,
            ))
        return results

    # ---------------------------------------------------------------- option likelihood
    def score_options(self, contexts: Sequence[str], options: Sequence[Sequence[str]], *,
                      normalize: Literal["tokens", "chars", "none"] = "tokens",
                      batch_size: int = 8) -> list[OptionScores]:
        """Log-likelihood of each option as a continuation of its context (evaluation-harness "cloze").

        The continuation is ``" " + option`` unless the context ends in whitespace. Its tokens are
        taken from the encoding of context+continuation (so merges across the boundary are as the
        model would see them). Sequences are left-padded so that only the last positions' logits are
        computed: a 262k vocabulary times the whole sequence would not fit in memory.
        """
        import torch

        if len(contexts) != len(options) or not contexts:
            raise InvalidRequestError("contexts and options must be non-empty lists of equal length")
        if normalize not in ("tokens", "chars", "none"):
            raise InvalidRequestError(f"normalize must be tokens, chars or none, got {normalize!r}")
        pairs: list[tuple[int, list[int], list[int], str]] = []
        for q, (ctx, opts) in enumerate(zip(contexts, options, strict=True)):
            if not ctx or not opts or any(not o or not o.strip() for o in opts):
                raise InvalidRequestError(f"item {q}: empty context, empty option list or empty option")
            for opt in opts:
                cont = opt if ctx[-1].isspace() or opt[0].isspace() else " " + opt
                pairs.append((q, *self._split_continuation(ctx, cont), cont))
        sums = [0.0] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1]) - len(pairs[i][2]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            seqs = [pairs[i][1] + pairs[i][2] for i in chunk]
            width = max(map(len, seqs))
            keep = max(len(pairs[i][2]) for i in chunk) + 1
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, keep-1, V) predicts the tail
            for b, i in enumerate(chunk):
                cont_ids = pairs[i][2]
                tail = logp[b, keep - 1 - len(cont_ids):]  # (len(cont_ids), V)
                target = torch.tensor(cont_ids, device=self.device)
                sums[i] = float(tail.gather(1, target[:, None]).sum())
        results, k = [], 0
        for opts in options:
            s = sums[k:k + len(opts)]
            ntok = [len(pairs[k + j][2]) for j in range(len(opts))]
            nch = [len(pairs[k + j][3]) for j in range(len(opts))]
            div = ntok if normalize == "tokens" else nch if normalize == "chars" else [1] * len(opts)
            results.append(OptionScores(tuple(s), tuple(ntok), tuple(nch),
                                        tuple(v / d for v, d in zip(s, div, strict=True))))
            k += len(opts)
        return results

    def continuation_dists(self, contexts: Sequence[str], continuations: Sequence[str], *,
                           top_k: int = 20, batch_size: int = 8) -> list[ContinuationDists]:
        """Teacher-force each continuation after its context: per position, the top-k next-token
        distribution, the log-probability of the continuation's own token and its byte boundary
        (``ContinuationDists``; what fused option likelihood aligns across vocabularies).

        Tokens are split as in ``score_options`` (merges across the boundary as the model sees them);
        only the continuation's logits are computed.
        """
        import torch

        if len(contexts) != len(continuations) or not contexts:
            raise InvalidRequestError("contexts and continuations must be non-empty lists of equal length")
        if not isinstance(top_k, int) or top_k < 1:
            raise InvalidRequestError(f"top_k must be a positive integer, got {top_k!r}")
        if any(not c for c in contexts) or any(not c for c in continuations):
            raise InvalidRequestError("empty context or continuation")
        pairs = [self._split_continuation(c, t) for c, t in zip(contexts, continuations, strict=True)]
        out: list[ContinuationDists | None] = [None] * len(pairs)
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in chunk]
            width = max(map(len, seqs))
            keep = max(len(pairs[i][1]) for i in chunk) + 1
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, keep-1, V)
            for b, i in enumerate(chunk):
                cont = pairs[i][1]
                tail = logp[b, keep - 1 - len(cont):]  # (L, V)
                target = tail.gather(1, torch.tensor(cont, device=self.device)[:, None])[:, 0]
                vals, top = torch.topk(tail, min(top_k, tail.shape[-1]), dim=-1)
                out[i] = ContinuationDists(
                    np.asarray(cont, dtype=np.int64), self._byte_ends(cont, continuations[i]),
                    target.cpu().numpy().astype(np.float32), top.cpu().numpy().astype(np.int64),
                    vals.cpu().numpy().astype(np.float32))
        return [o for o in out if o is not None]

    def _byte_ends(self, cont: list[int], text: str) -> np.ndarray:
        """UTF-8 bytes of the continuation ``text`` after each of its tokens ``cont``, from the tokens'
        surface forms (decoding prefixes is unreliable: SentencePiece drops leading spaces, byte pieces
        split characters). The byte convention is the one anchors use, so vocabularies agree on it.
        A SentencePiece dummy-prefix space (when the continuation had to be encoded alone) is not
        part of the text: the excess is taken off the front."""
        if self._scheme is None:
            self._scheme = detect_scheme(self.vocabulary().tokens)
        tokens = self.tokenizer.convert_ids_to_tokens(cont)
        ends = np.cumsum([len(surface_bytes(t, self._scheme)) for t in tokens]).astype(np.int64)
        excess = int(ends[-1]) - len(text.encode("utf-8")) if len(ends) else 0
        return np.maximum(ends - max(excess, 0), 0)

    def _split_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        whole = self.tokenizer.encode(context + continuation, add_special_tokens=True)
        ctx = self.tokenizer.encode(context, add_special_tokens=True)
        if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx):]
        return ctx, self.tokenizer.encode(continuation, add_special_tokens=False)

    # ---------------------------------------------------------------- KV-cache sessions
    def open_session(self, prompt: str, *, apply_format: bool = True, top_k: int | None = 20,
                     session_id: str | None = None) -> StepState:
        """Start a session: run the prompt once, keep its KV cache, return the next-token distribution."""
        texts, add_special = self._prompt_texts([prompt], apply_format)
        ids = self.tokenizer.encode(texts[0], add_special_tokens=add_special)
        return self.sessions.open(ids, top_k=top_k, session_id=session_id)

    def append_tokens(self, session_id: str, token_ids: Sequence[int], *,
                      top_k: int | None = 20) -> StepState:
        """Feed token ids into a session; returns the distribution after the last one."""
        return self.sessions.append(session_id, list(token_ids), top_k=top_k)

    def append_text(self, session_id: str, text: str, *, top_k: int | None = 20) -> StepState:
        """Feed text (tokenised on its own, without special tokens) into a session."""
        if not text:
            raise InvalidRequestError("append_text: text must be non-empty")
        return self.append_tokens(session_id, self.tokenizer.encode(text, add_special_tokens=False),
                                  top_k=top_k)

    def next_token(self, session_id: str, *, top_k: int | None = 20) -> StepState:
        """The current distribution of a session, without computing anything."""
        s = self.sessions.get(session_id)
        return StepState(session_id, to_dist(s.last_logits, top_k), len(s.ids))

    def close_session(self, session_id: str) -> None:
        self.sessions.close(session_id)

    def session_token_ids(self, session_id: str, *, last: int | None = None) -> list[int]:
        """The token ids a session holds (prompt and appended), or only its ``last`` ones."""
        return self.sessions.token_ids(session_id, last=last)

    def replace_tokens(self, session_id: str, n_keep: int, token_ids: Sequence[int], *,
                       top_k: int | None = 20) -> StepState:
        """Keep a session's first ``n_keep`` tokens (KV cache rewound), then feed ``token_ids``.

        Token-level fusion re-tokenises the unstable tail of the text it feeds: this swaps that tail
        in one call. With ``n_keep`` equal to the session length it is ``append_tokens``.
        """
        return self.sessions.replace(session_id, n_keep, list(token_ids), top_k=top_k)

    def truncate_session(self, session_id: str, n_tokens: int, *, top_k: int | None = 20) -> StepState:
        """Rewind a session to its first ``n_tokens`` tokens (>= 1); returns the distribution there."""
        return self.sessions.replace(session_id, n_tokens, [], top_k=top_k)

    # ---------------------------------------------------------------- vocabulary and embeddings
    def vocabulary(self) -> VocabInfo:
        tok = self.tokenizer
        return VocabInfo(
            tokens=tuple(tok.convert_ids_to_tokens(list(range(len(tok))))),
            special_ids=tuple(sorted(set(tok.all_special_ids))), bos_id=tok.bos_token_id,
            eos_ids=tuple(sorted(self.eos_ids)), pad_id=tok.pad_token_id,
            model_vocab_size=int(self.model.get_input_embeddings().weight.shape[0]),
        )

    def input_embeddings(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """Rows of the input embedding matrix as float32 numpy, ``(len(ids) or V, d)``."""
        weight = self.model.get_input_embeddings().weight
        if ids is not None:
            bad = [i for i in ids if not 0 <= i < weight.shape[0]]
            if bad:
                raise InvalidRequestError(f"token ids out of range [0, {weight.shape[0]}): {bad[:5]}")
            weight = weight[list(ids)]
        return weight.detach().float().cpu().numpy()

    def tokenizer_files(self) -> dict[str, bytes]:
        """The tokenizer as saved by ``save_pretrained`` (rebuild it anywhere without the model)."""
        with tempfile.TemporaryDirectory() as d:
            self.tokenizer.save_pretrained(d)
            return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}

    def fingerprint(self) -> str:
        """A stable id of what determines this expert's answers: weights, tokenizer and prompt
        format (response-cache keys use it: change any of them and old answers no longer match).

        Prepared assets carry the pinned GGUF sha256 in their manifest; other directories are
        identified by the names, sizes and mtimes of their files, hub ids by id and revision.
        """
        import dataclasses
        import hashlib
        import json

        root = Path(self.model_dir)
        manifest = root / "der_ray_asset.json"
        if manifest.is_file():
            weights = "gguf-sha256:" + str(json.loads(manifest.read_text()).get("gguf_sha256", ""))
        elif not root.is_dir():
            weights = f"hub:{self.model_dir}@{self.cfg.revision or 'main'}"
        else:
            h = hashlib.sha256()
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            weights = "files-sha256:" + h.hexdigest()[:32]
        prompt = json.dumps(dataclasses.asdict(self.cfg.prompt), sort_keys=True)
        return f"{weights}+prompt:{hashlib.sha256(prompt.encode()).hexdigest()[:16]}"

    def health(self) -> ExpertHealth:
        return ExpertHealth(
            name=self.name, ok=True, device=self.device, dtype=str(self.model.dtype).removeprefix("torch."),
            pid=os.getpid(), n_params=sum(p.numel() for p in self.model.parameters()),
            open_sessions=len(self.sessions), model_dir=self.model_dir,
            extra={"load_s": f"{self.load_s:.2f}"},
        )

    # ---------------------------------------------------------------- helpers
    def _prompt_texts(self, prompts: Sequence[str], apply_format: bool) -> tuple[list[str], bool]:
        if isinstance(prompts, str) or not prompts:
            raise InvalidRequestError("prompts must be a non-empty list of strings")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InvalidRequestError(f"prompt {i} is empty")
        if apply_format:
            return [self.formatter.format(p) for p in prompts], self.formatter.add_special_tokens
        return list(prompts), True

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return frozenset(ids)


def _check_generation_args(max_new_tokens: Any, temperature: float, top_p: float) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise InvalidRequestError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise InvalidRequestError(f"temperature must be >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {top_p!r}")


class _StopStrings:
    """A per-row stopping criterion for ``model.generate``: stops a row once its new text holds a stop
    string. Only a short tail is decoded per step (a stop string ending in the newest token starts at
    most ``len(stop)`` tokens back), so the check costs O(batch) small decodes per step."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_len: int, batch: int) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.window = max((len(s) for s in stops), default=0) + 4
        self.stopped_at = [0] * batch

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return done
        n_new = input_ids.shape[1] - self.prompt_len
        for row in range(input_ids.shape[0]):
            if self.stopped_at[row]:
                done[row] = True
                continue
            tail = input_ids[row, max(self.prompt_len, input_ids.shape[1] - self.window):].tolist()
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            if any(s in text for s in self.stops):
                self.stopped_at[row] = n_new
                done[row] = True
        return done
