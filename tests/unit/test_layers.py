"""Architecture checks: nothing heavy at import time, and layers import one way (STYLE.md §3)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "der_ray"

# module prefix -> der_ray subpackages it must not import (lower layers never see higher ones)
FORBIDDEN = {
    "der_ray.errors": ["der_ray."],
    "der_ray.types": ["der_ray.config", "der_ray.experts", "der_ray.data", "der_ray.evals"],
    "der_ray.config": ["der_ray.experts", "der_ray.data", "der_ray.scoring", "der_ray.evals"],
    "der_ray.assets": ["der_ray.experts", "der_ray.data", "der_ray.scoring", "der_ray.evals"],
    "der_ray.data": ["der_ray.experts", "der_ray.scoring", "der_ray.evals", "der_ray.assets"],
    "der_ray.scoring": ["der_ray.experts", "der_ray.evals"],
    "der_ray.experts": ["der_ray.evals", "der_ray.routing", "der_ray.fusion", "der_ray.serve"],
    "der_ray.routing": ["der_ray.fusion", "der_ray.evals", "der_ray.serve"],
    "der_ray.fusion": ["der_ray.routing", "der_ray.evals", "der_ray.serve"],
}
RAY_FREE = ["der_ray.config", "der_ray.types", "der_ray.experts.hf", "der_ray.experts.prompts",
            "der_ray.experts.sessions", "der_ray.data", "der_ray.scoring", "der_ray.evals",
            "der_ray.fusion", "der_ray.routing.reward", "der_ray.routing.episode", "der_ray.routing.ktp"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out[name] = _imports(path)
    return out


def test_layers_point_one_way():
    bad = []
    for module, imports in _modules().items():
        for prefix, banned in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                bad += [f"{module} imports {i}" for i in imports
                        if any(i.startswith(b) for b in banned) and not i.startswith(prefix)]
        if any(module == m or module.startswith(m + ".") for m in RAY_FREE):
            bad += [f"{module} imports {i}" for i in imports if i == "ray" or i.startswith("ray.")]
    assert not bad, "\n".join(bad)


def test_importing_the_package_loads_no_torch_or_ray():
    code = ("import sys, der_ray, der_ray.config, der_ray.experts.hf, der_ray.experts.actors, "
            "der_ray.data, der_ray.scoring, der_ray.assets, der_ray.evals.answering, der_ray.cli, "
            "der_ray.routing.env, der_ray.routing.episode; "
            "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
