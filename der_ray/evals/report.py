"""Summaries of scored answers: per expert x domain accuracy, tokens and latency; JSON + Markdown.

Writes are atomic (temp file + rename) so a killed job never leaves half a report.
Imports: stdlib, evals.answering.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from der_ray.evals.answering import Answer


def summarize(answers: Sequence[Answer]) -> dict[str, Any]:
    """``{"experts": {name: {"domains": {d: acc}, "mean": acc, "n": n, ...}}, "domains": [...]}``."""
    by_expert: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_expert[a.expert].append(a)
    domains = sorted({a.domain for a in answers})
    experts = {}
    for name, rows in by_expert.items():
        per_domain = {d: [a.score for a in rows if a.domain == d] for d in domains}
        generated = [a for a in rows if a.method == "generate"]
        experts[name] = {
            "domains": {d: sum(s) / len(s) for d, s in per_domain.items() if s},
            "n": {d: len(s) for d, s in per_domain.items()},
            "mean": sum(a.score for a in rows) / len(rows),
            "mean_completion_tokens": (sum(a.completion_tokens for a in generated) / len(generated)
                                       if generated else 0.0),
            "mean_latency_s": sum(a.latency_s for a in generated) / len(generated) if generated else 0.0,
        }
    return {"domains": domains, "experts": experts}


def markdown_table(summary: dict[str, Any]) -> str:
    domains = summary["domains"]
    head = ["expert", *domains, "mean", "gen tokens", "s/answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary["experts"].items():
        cells = [f"{s['domains'][d]:.2f} ({s['n'][d]})" if d in s["domains"] else "-" for d in domains]
        lines.append("| " + " | ".join([name, *cells, f"{s['mean']:.2f}",
                                        f"{s['mean_completion_tokens']:.0f}",
                                        f"{s['mean_latency_s']:.2f}"]) + " |")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
