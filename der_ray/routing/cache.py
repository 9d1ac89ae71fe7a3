"""``ResponseCache``: a durable key -> expert-reply store shared by processes on one filesystem.

Contract:

- A key is the sha256 of canonical JSON of (expert name, weights fingerprint, method, the exact
  single-item request, the generation params); see ``make_key``. Same key, same answer: only
  deterministic calls may be stored (``routing.cached`` decides which).
- Storage is a directory of immutable Parquet *segments*. A writer buffers records and flushes them
  as a new file written under a temporary name and renamed with ``os.replace``. A crash (even
  SIGKILL) mid-flush therefore leaves at most an ignored ``.tmp-*`` file, never a torn record, and
  concurrent writers never share a file, so no cross-process lock is needed to write.
- Readers load every segment at open into a dict; on a miss they re-list the directory (at most
  every ``refresh_s`` seconds) and load segments they have not seen, so answers written by other
  env runners, Tune trials or jobs show up. An unreadable segment is skipped with a warning.
  Duplicate keys across segments are harmless (the first one loaded wins).
- ``compact`` merges all segments into one under a ``filelock`` in the root; it writes the merged
  segment before deleting the old ones, and a reader that listed a segment which then vanished
  simply skips it (its records are in the merged segment, which the next scan picks up).
- Buffered records are written at ``flush_every`` records, when the oldest is ``max_buffer_s`` old
  (checked at the next ``put``), at ``flush()``, ``close()``/``with`` exit and, best effort, at
  interpreter exit. Records still buffered when a process is killed are lost (they are recomputed
  on the next miss): the price of not writing a file per call.

Stats (hits, misses, puts = unique LLM calls made) are per process and per expert.
Imports: stdlib, pyarrow, filelock (lazily), der_ray.errors.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from der_ray.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("expert", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("request", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("result", pa.string(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
    pa.field("latency_s", pa.float64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])
SEGMENT_GLOB = "seg-*.parquet"
LOCK_NAME = ".compact.lock"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0  # a temp file this old belongs to a writer that died mid-flush


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists, unicode kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_key(expert: str, fingerprint: str, method: str, request: Mapping[str, Any],
             params: Mapping[str, Any]) -> str:
    """The cache key of one single-item call.

    Args:
        expert: the expert's configured name.
        fingerprint: ``HFExpert.fingerprint()`` of its weights and tokenizer.
        method: ``"generate"`` or ``"score_options"``.
        request: the exact single item, e.g. ``{"prompt": msg}`` or ``{"context": c, "options": [...]}``.
        params: generation params as passed (``routing.cached`` normalises them first).
    Returns:
        64 hex characters.
    """
    payload = canonical_json([expert, fingerprint, method, dict(request), dict(sorted(params.items()))])
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """One stored reply (one row of a segment)."""

    key: str
    expert: str
    fingerprint: str
    method: str
    request: str
    """Canonical JSON of the request and params (for inspection; the key is what matters)."""
    text: str
    """The answer text; for ``score_options`` the chosen option."""
    result: str
    """JSON of the result object's fields (``Generation`` or ``OptionScores``)."""
    completion_tokens: int
    latency_s: float
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class _Counts:
    hits: int = 0
    misses: int = 0
    puts: int = 0


class ResponseCache:
    """A durable, multi-process key -> ``CacheRecord`` store; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str], *, flush_every: int = 64, refresh_s: float = 1.0,
                 max_buffer_s: float = 10.0) -> None:
        """Open (creating if needed) the cache at ``root`` and load every segment.

        Args:
            flush_every: buffered records that trigger a flush.
            refresh_s: minimum seconds between directory scans triggered by misses.
            max_buffer_s: a ``put`` also flushes once the oldest buffered record is this old, which
                bounds what a killed env runner (no ``atexit`` under ``ray.kill``) can lose.
        Raises:
            ConfigError: a non-positive ``flush_every`` or negative interval.
        """
        if flush_every < 1:
            raise ConfigError(f"cache flush_every must be >= 1, got {flush_every}")
        if refresh_s < 0 or max_buffer_s < 0:
            raise ConfigError(f"cache refresh_s and max_buffer_s must be >= 0, got {refresh_s}, "
                              f"{max_buffer_s}")
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush_every, self.refresh_s, self.max_buffer_s = flush_every, refresh_s, max_buffer_s
        self._buffer_since = 0.0
        self._records: dict[str, CacheRecord] = {}
        self._buffer: list[CacheRecord] = []
        self._seen: set[str] = set()  # segment file names already loaded (or found unreadable)
        self._counts: dict[str, _Counts] = {}
        self._lock = threading.RLock()  # env runners are single-threaded; actors and tqdm may not be
        self._last_scan = 0.0
        self._closed = False
        self.refresh(force=True)
        _register_for_exit(self)

    # ---------------------------------------------------------------- reading
    def get(self, key: str, *, expert: str | None = None) -> CacheRecord | None:
        """The record of ``key`` or None; re-scans for new segments on a miss (rate-limited).

        With ``expert`` the lookup counts as a hit or miss of that expert in ``stats()``.
        """
        rec = self._records.get(key)
        if rec is None and self.refresh() and (rec := self._records.get(key)) is not None:
            log.debug("cache key %s found in a segment written by another process", key[:12])
        if expert is not None:
            with self._lock:
                counts = self._counts.setdefault(expert, _Counts())
                if rec is None:
                    counts.misses += 1
                else:
                    counts.hits += 1
        return rec

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[str]:
        return list(self._records)

    def refresh(self, *, force: bool = False) -> int:
        """Load segments written since the last scan; returns how many new records appeared.

        Cheap when nothing changed (one ``listdir``), and skipped entirely when the last scan is
        less than ``refresh_s`` old unless ``force``.
        """
        now = time.monotonic()
        if not force and now - self._last_scan < self.refresh_s:
            return 0
        with self._lock:
            self._last_scan = now
            try:
                names = sorted(n for n in os.listdir(self.root)
                               if n.startswith("seg-") and n.endswith(".parquet") and n not in self._seen)
            except FileNotFoundError:  # root removed under us: nothing to read
                return 0
            before = len(self._records)
            for name in names:
                self._seen.add(name)
                table = _read_segment(self.root / name)
                if table is not None:
                    self._absorb(table)
            return len(self._records) - before

    def _absorb(self, table: pa.Table) -> None:
        cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
        records = self._records
        for row in zip(*(cols[n] for n in SCHEMA.names), strict=True):
            if row[0] not in records:  # keep the first copy of a key
                records[row[0]] = CacheRecord(*row)

    # ---------------------------------------------------------------- writing
    def put(self, record: CacheRecord) -> bool:
        """Add a record (flushed later); returns False when the key is already stored."""
        with self._lock:
            if self._closed:
                raise ConfigError(f"response cache {self.root} is closed")
            if record.key in self._records:
                return False
            self._records[record.key] = record
            if not self._buffer:
                self._buffer_since = time.monotonic()
            self._buffer.append(record)
            self._counts.setdefault(record.expert, _Counts()).puts += 1
            if (len(self._buffer) >= self.flush_every
                    or time.monotonic() - self._buffer_since >= self.max_buffer_s):
                self.flush()
            return True

    def flush(self) -> Path | None:
        """Write buffered records as one new segment; returns its path (None if nothing was buffered)."""
        with self._lock:
            if not self._buffer:
                return None
            path = self._write_segment(_to_table(self._buffer))
            self._buffer = []
            return path

    def _write_segment(self, table: pa.Table) -> Path:
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = self.root / f"{_TMP_PREFIX}{name}"
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())  # the rename must not become visible before the bytes (power loss)
        os.replace(tmp, self.root / name)
        self._seen.add(name)  # our own records are in memory already
        _fsync_dir(self.root)
        return self.root / name

    def close(self) -> None:
        """Flush and stop accepting records (reads keep working)."""
        with self._lock:
            if not self._closed:
                self.flush()
                self._closed = True

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- maintenance
    def compact(self) -> Path | None:
        """Merge every segment into one (deduplicated); returns the new segment or None if < 2 segments.

        Only one process compacts at a time (file lock). Writers may keep flushing meanwhile: a
        segment that appears after the listing is simply not merged this time.
        """
        from filelock import FileLock

        self.flush()
        with FileLock(str(self.root / LOCK_NAME)), self._lock:
            self._remove_stale_tmp()
            paths = sorted(self.root.glob(SEGMENT_GLOB))
            tables = [(p, t) for p in paths if (t := _read_segment(p)) is not None]
            if len(tables) < 2:
                return None
            merged = pa.concat_tables([t for _, t in tables])
            merged = _first_of_each_key(merged)
            out = self._write_segment(merged)
            for p, _ in tables:  # only after the merged segment is durable
                p.unlink(missing_ok=True)
                self._seen.add(p.name)
            self._absorb(merged)
            log.info("compacted %d segments into %s (%d records)", len(tables), out.name, merged.num_rows)
            return out

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for p in self.root.glob(_TMP_PREFIX + "*"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except FileNotFoundError:
                pass

    def segments(self) -> list[Path]:
        return sorted(self.root.glob(SEGMENT_GLOB))

    def stats(self) -> dict[str, Any]:
        """This process's counts: ``hits, misses, puts, hit_rate, records, experts: {name: {...}}``."""
        with self._lock:
            per = {name: {"hits": c.hits, "misses": c.misses, "puts": c.puts}
                   for name, c in sorted(self._counts.items())}
        total = {k: sum(v[k] for v in per.values()) for k in ("hits", "misses", "puts")}
        looked = total["hits"] + total["misses"]
        return {**total, "hit_rate": total["hits"] / looked if looked else 0.0,
                "records": len(self._records), "experts": per}


def _to_table(records: list[CacheRecord]) -> pa.Table:
    cols = {name: [getattr(r, name) for r in records] for name in SCHEMA.names}
    return pa.table(cols, schema=SCHEMA)


def _first_of_each_key(table: pa.Table) -> pa.Table:
    first: dict[str, int] = {}
    for i, k in enumerate(table.column("key").to_pylist()):
        first.setdefault(k, i)
    return table.take(pa.array(sorted(first.values()), type=pa.int64()))


def _read_segment(path: Path) -> pa.Table | None:
    """Read one segment, or None (with a warning) when it is unreadable or not a cache segment."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:  # merged away by compact() after we listed it
        return None
    except (pa.ArrowException, OSError) as e:
        log.warning("response cache: skipping unreadable segment %s: %s", path, e)
        return None
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        log.warning("response cache: skipping segment %s without column(s) %s", path, missing)
        return None
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        log.warning("response cache: skipping segment %s with a different schema: %s", path, e)
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Caches still open at interpreter exit get flushed. A WeakSet (not a strong list) so that a
# dropped cache can be garbage collected; the hook is registered on first use, not at import.
_OPEN: weakref.WeakSet[ResponseCache] = weakref.WeakSet()
_HOOKED = False


def _register_for_exit(cache: ResponseCache) -> None:
    global _HOOKED
    _OPEN.add(cache)
    if not _HOOKED:
        atexit.register(_flush_all_at_exit)
        _HOOKED = True


def _flush_all_at_exit() -> None:
    for cache in list(_OPEN):
        try:
            cache.close()
        except OSError as e:  # best effort: the disk may be gone at exit
            log.warning("response cache %s: could not flush at exit: %s", cache.root, e)
