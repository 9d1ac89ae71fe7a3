"""``CachedExpert``: an expert behind the ``ResponseCache``, and ``prefetch`` to fill it in parallel.

``CachedExpert`` has the expert API the routing episode uses (``generate`` and ``score_options``
returning ``list[Generation]`` / ``list[OptionScores]``). Each item of a batch is looked up under
its own key (one prompt, or one context with its options, plus the params), and only the misses go
to the wrapped expert, in one batched call. Per-item keys are sound because batched greedy decoding
equals unbatched greedy decoding for our experts (tested in ``test_hf_expert``), so the precompute
job may batch and the env may ask one item at a time and still meet on the same keys.

What is cached: ``score_options`` always (a forward pass); ``generate`` when greedy (temperature 0,
or omitted with a known greedy default) or when sampling with a ``seed``. Seeded samples are made one
item per call, since ``HFExpert`` seeds once per batch and a sample would otherwise depend on its
batch mates. Sampling without a seed bypasses the cache. Params that cannot change a greedy answer
(``seed``, ``top_p``) or any answer (``batch_size``) are left out of the key, and ``None`` means
"not given", so ``f(x)`` and ``f(x, seed=None)`` share a key.

The wrapped expert is a local ``HFExpert`` or an actor handle (``RemoteExpert``); ``prefetch``
submits all batches to every actor before waiting on any, so the actors work concurrently, and
``precompute_chains`` uses it to fill step-0 answers and KTP chains (``jobs/build_cache.py``).
Imports: core, data.schema, routing.{cache,ktp}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import zip_longest
from typing import Any

from der_ray.config import ExpertConfig, RouterConfig
from der_ray.data.schema import Example
from der_ray.errors import InvalidRequestError
from der_ray.routing.cache import CacheRecord, ResponseCache, canonical_json, make_key
from der_ray.routing.ktp import Call, expert_call, reply_from
from der_ray.types import Generation, OptionScores

GENERATE, SCORE_OPTIONS = "generate", "score_options"
_NOT_IN_KEY = {GENERATE: ("batch_size",), SCORE_OPTIONS: ("batch_size",)}  # throughput knobs only
_GREEDY_IGNORES = ("seed", "top_p")  # HFExpert drops top_p and a seed cannot matter when greedy

Request = dict[str, Any]  # {"prompt": str} or {"context": str, "options": [str, ...]}


def key_params(method: str, params: Mapping[str, Any],
               default_temperature: float | None) -> dict[str, Any] | None:
    """The params as they enter the key, or None when the call is not deterministic (bypass)."""
    p = {k: v for k, v in params.items() if v is not None and k not in _NOT_IN_KEY.get(method, ())}
    for k in ("temperature", "top_p"):  # 0 and 0.0 must not make two keys
        if k in p:
            p[k] = float(p[k])
    if "stop" in p:
        p["stop"] = list(p["stop"])
    if method != GENERATE:
        return p
    temperature = p.get("temperature", default_temperature)
    if temperature is None or (temperature > 0 and "seed" not in p):
        return None
    if temperature == 0:
        p["temperature"] = 0.0
        for k in _GREEDY_IGNORES:
            p.pop(k, None)
    return p


def requests_of(method: str, args: Sequence[Any]) -> list[Request]:
    """Split the positional args of a batched call into single-item requests."""
    if method == GENERATE:
        prompts = args[0]
        if isinstance(prompts, str) or not prompts:
            raise InvalidRequestError("prompts must be a non-empty list of strings")
        return [{"prompt": p} for p in prompts]
    if method == SCORE_OPTIONS:
        contexts, options = args
        if isinstance(contexts, str) or not contexts or len(contexts) != len(options):
            raise InvalidRequestError("contexts and options must be non-empty lists of equal length")
        return [{"context": c, "options": list(o)} for c, o in zip(contexts, options, strict=True)]
    raise InvalidRequestError(f"method {method!r} is not cacheable; use 'generate' or 'score_options'")


def args_of(method: str, requests: Sequence[Request]) -> tuple[Any, ...]:
    """The positional args of one batched call over ``requests`` (inverse of ``requests_of``)."""
    if method == GENERATE:
        return ([r["prompt"] for r in requests],)
    return ([r["context"] for r in requests], [list(r["options"]) for r in requests])


@dataclass
class Plan:
    """One batched call resolved against the cache: which keys hit and which must be computed."""

    cached: CachedExpert
    method: str
    params: dict[str, Any]
    """What the expert receives (the caller's params, unchanged)."""
    keys: list[str]
    """One key per input item, in order."""
    missing: dict[str, Request]
    """Unique keys not in the cache -> their request."""
    sequential: bool
    """Seeded sampling: compute one item per call."""

    def chunks(self, batch_size: int) -> list[list[tuple[str, Request]]]:
        items = list(self.missing.items())
        step = 1 if self.sequential else max(1, batch_size)
        return [items[i:i + step] for i in range(0, len(items), step)]

    def results(self) -> list[Any]:
        """The result objects in input order (every key must be stored by now)."""
        out = []
        for key in self.keys:
            rec = self.cached.cache.get(key)
            if rec is None:  # only if a compute step was skipped: a bug, not a user error
                raise KeyError(f"response cache lost key {key[:12]} of expert {self.cached.name!r}")
            out.append(from_record(rec))
        return out


class CachedExpert:
    """``generate`` / ``score_options`` of ``expert`` through ``cache`` (see the module docstring)."""

    def __init__(self, name: str, expert: Any, fingerprint: str, cache: ResponseCache, *,
                 default_temperature: float | None = None) -> None:
        """``default_temperature`` is the expert's configured temperature, used when a call omits it;
        it is read from a local ``HFExpert``'s config when not given. Unknown -> such calls bypass."""
        self.name, self.expert, self.cache, self._fingerprint = name, expert, cache, fingerprint
        cfg = vars(expert).get("cfg") if hasattr(expert, "__dict__") else None  # no RemoteExpert getattr
        if default_temperature is None and isinstance(cfg, ExpertConfig):
            default_temperature = cfg.generation.temperature
        self.default_temperature = default_temperature
        self.bypassed = 0
        """Items sent to the expert without the cache (sampling without a seed)."""

    def fingerprint(self) -> str:
        return self._fingerprint

    def generate(self, prompts: Sequence[str], **params: Any) -> list[Generation]:
        return self._call(GENERATE, (prompts,), params)

    def score_options(self, contexts: Sequence[str], options: Sequence[Sequence[str]],
                      **params: Any) -> list[OptionScores]:
        return self._call(SCORE_OPTIONS, (contexts, options), params)

    def _call(self, method: str, args: tuple[Any, ...], params: dict[str, Any]) -> list[Any]:
        plan = self.plan(method, args, params)
        if plan is None:
            self.bypassed += len(args[0])
            result: list[Any] = getattr(self.expert, method)(*args, **params)
            return result
        for chunk in plan.chunks(len(plan.missing)):
            self.store(plan.method, plan.params, chunk,
                       getattr(self.expert, method)(*args_of(method, [r for _, r in chunk]), **params))
        return plan.results()

    def plan(self, method: str, args: Sequence[Any], params: Mapping[str, Any]) -> Plan | None:
        """Look every item up (counting hits and misses); None when the call must bypass the cache."""
        requests = requests_of(method, args)
        kparams = key_params(method, params, self.default_temperature)
        if kparams is None:
            return None
        keys = [make_key(self.name, self._fingerprint, method, r, kparams) for r in requests]
        missing: dict[str, Request] = {}
        for key, req in dict(zip(keys, requests, strict=True)).items():  # a repeated item is one lookup
            if self.cache.get(key, expert=self.name) is None:
                missing[key] = req
        sequential = method == GENERATE and kparams.get("temperature", 0.0) > 0
        return Plan(self, method, dict(params), keys, missing, sequential)

    def store(self, method: str, params: Mapping[str, Any], chunk: Sequence[tuple[str, Request]],
              results: Sequence[Any]) -> None:
        """Put the expert's results for ``chunk`` (key, request pairs) into the cache."""
        if len(results) != len(chunk):
            raise InvalidRequestError(f"expert {self.name!r} returned {len(results)} results for "
                                      f"{len(chunk)} items")
        for (key, req), res in zip(chunk, results, strict=True):
            self.cache.put(to_record(self.name, self._fingerprint, method, key, req, params, res))


def to_record(expert: str, fingerprint: str, method: str, key: str, request: Request,
              params: Mapping[str, Any], result: Any) -> CacheRecord:
    """A ``CacheRecord`` for one item's result (``Generation`` or ``OptionScores``)."""
    fields = asdict(result)
    if method == GENERATE:
        text, tokens, latency = result.text, result.completion_tokens, result.latency_s
    else:  # option scoring has no per-item latency; the env charges 0 for it (ktp.reply_from)
        text, tokens, latency = request["options"][result.best], 0, 0.0
    return CacheRecord(key=key, expert=expert, fingerprint=fingerprint, method=method,
                       request=canonical_json({"request": request, "params": dict(params)}),
                       text=text, result=json.dumps({"method": method, **fields}),
                       completion_tokens=int(tokens), latency_s=float(latency))


def from_record(rec: CacheRecord) -> Generation | OptionScores:
    """Rebuild the result object stored in ``rec``."""
    data = json.loads(rec.result)
    method = data.pop("method", rec.method)
    if method == GENERATE:
        return Generation(**data)
    return OptionScores(**{k: tuple(v) for k, v in data.items()})


def prefetch(work: Sequence[tuple[CachedExpert, Call]], *, batch_size: int = 16,
             progress: Callable[[int], None] | None = None) -> list[Any]:
    """Answer many single- or multi-item calls, filling the cache with every miss in batches.

    Misses are grouped per (expert, method, params) and deduplicated by key. Every batch of every
    expert is submitted before any result is awaited (actors that have ``submit``, i.e.
    ``RemoteExpert``), so all actors work at once; local experts compute at submission.

    Args:
        work: (cached expert, call) pairs, e.g. from ``routing.ktp.expert_call``.
        batch_size: items per expert call.
        progress: called with the number of items stored after each batch (a tqdm ``update``).
    Returns:
        One result list per work item, as the bare call would return it.
    Raises:
        InvalidRequestError: a call that cannot be cached (sampling without a seed).
        ExpertError: an expert call failed (batches completed before it stay cached).
    """
    plans: list[Plan] = []
    groups: dict[tuple[int, str, str], tuple[Plan, dict[str, Request]]] = {}
    for cached, call in work:
        plan = cached.plan(call.method, call.args, call.kwargs)
        if plan is None:
            raise InvalidRequestError(f"prefetch: {call.method} of {cached.name!r} with {call.kwargs} "
                                      "is not deterministic, so it cannot be cached")
        plans.append(plan)
        gid = (id(cached), call.method, canonical_json(plan.params))
        group = groups.setdefault(gid, (plan, {}))
        group[1].update(plan.missing)
    batches: list[list[tuple[Plan, list[tuple[str, Request]]]]] = []
    for plan, missing in groups.values():
        merged = Plan(plan.cached, plan.method, plan.params, [], missing, plan.sequential)
        batches.append([(merged, chunk) for chunk in merged.chunks(batch_size)])
    pending = [_submit(plan, chunk) for plan, chunk in _round_robin(batches)]
    for plan, chunk, handle in pending:
        expert = plan.cached.expert
        results = expert.result(handle) if _has_submit(expert) else handle
        plan.cached.store(plan.method, plan.params, chunk, results)
        if progress is not None:
            progress(len(chunk))
    return [plan.results() for plan in plans]


def _has_submit(expert: Any) -> bool:
    return callable(getattr(type(expert), "submit", None))  # not RemoteExpert.__getattr__'s catch-all


def _submit(plan: Plan, chunk: list[tuple[str, Request]]) -> tuple[Plan, list[tuple[str, Request]], Any]:
    expert, args = plan.cached.expert, args_of(plan.method, [r for _, r in chunk])
    if _has_submit(expert):
        return plan, chunk, expert.submit(plan.method, *args, **plan.params)
    return plan, chunk, getattr(expert, plan.method)(*args, **plan.params)


def _round_robin(lists: list[list[Any]]) -> Iterator[Any]:
    """Interleave so that waiting in order never waits on one actor's long queue first."""
    for row in zip_longest(*lists):
        yield from (x for x in row if x is not None)


def precompute_chains(cached: Mapping[str, CachedExpert], prompt_formats: Mapping[str, str],
                      examples: Sequence[Example], router: RouterConfig, *, depth: int = 1,
                      batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[int]:
    """Fill the cache with every call a routing episode can make in its first ``depth + 1`` steps.

    Step 0 asks every expert every question; step d asks every expert the KTP built from each
    distinct answer of step d-1 (from any expert). Calls come from ``ktp.expert_call``, exactly as
    the environment makes them, so the env's one-item calls hit the same keys.

    Args:
        cached: expert name -> ``CachedExpert``; ``prompt_formats``: name -> ``prompt.format``.
        depth: KTP steps after step 0 (0: step-0 answers only). Work grows as experts^(depth+1).
    Returns:
        The number of calls asked at each step (before deduplication by key).
    """
    if depth < 0:
        raise InvalidRequestError(f"depth must be >= 0, got {depth}")
    prev: list[set[str | None]] = [{None} for _ in examples]  # per example: answers of the last step
    asked = []
    for _ in range(depth + 1):
        work, owners = [], []
        for i, ex in enumerate(examples):
            for answer in sorted(prev[i], key=lambda a: a or ""):
                for name, expert in cached.items():
                    work.append((expert, expert_call(ex, prompt_formats[name], answer, router)))
                    owners.append(i)
        results = prefetch(work, batch_size=batch_size, progress=progress)
        prev = [set() for _ in examples]
        for i, (_, call), result in zip(owners, work, results, strict=True):
            prev[i].add(reply_from(examples[i], call, result).text)
        asked.append(len(work))
    return asked
