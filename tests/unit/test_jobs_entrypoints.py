"""Every ``jobs/*.py`` is a thin entrypoint: importing it does no work (no Ray, torch or der_ray
heavy modules), and it has ``make_parser()`` and ``main(argv) -> int``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py"))
HEAVY = ("ray", "torch", "transformers", "pyarrow", "der_ray.experts", "der_ray.routing", "der_ray.fusion")

_PROBE = """
import importlib.util, inspect, json, sys
out = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("job_" + name, "jobs/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = list(inspect.signature(module.main).parameters) if hasattr(module, "main") else None
    out[name] = {"loaded": sorted(set(sys.modules) - before), "main_params": params,
                 "parser": callable(getattr(module, "make_parser", None))}
print(json.dumps(out))
"""


def test_jobs_do_no_work_at_import_and_share_one_shape():
    assert {"main", "prepare_models", "build_cache", "train_router", "evaluate_router",
            "evaluate_fusion", "sweep_cost"} <= set(JOBS)
    run = subprocess.run([sys.executable, "-c", _PROBE, *JOBS], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    for name, info in json.loads(run.stdout).items():
        heavy = [m for m in info["loaded"] if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]
        assert not heavy, f"jobs/{name}.py imports {heavy[:5]} at import time"
        assert info["parser"] and info["main_params"] == ["argv"], f"jobs/{name}.py: make_parser/main(argv)"
