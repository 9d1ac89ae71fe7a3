"""The main job on the embedded default, end to end, in one Ray session:

  1. prepare the experts (jobs/prepare_models.py)
  2. start them as Ray actors, once; every later stage reuses them by name
  3. fill the response cache on a small train slice (jobs/build_cache.py)
  4. train the DER router with PPO (jobs/train_router.py)
  5. evaluate it against the baselines on held-out questions (jobs/evaluate_router.py)
  6. run DeePEn fusion on a few questions (jobs/evaluate_fusion.py)
  7. write <output-dir>/report.md (tables + the quality-vs-cost plot) and report.json

    python jobs/main.py                                   # local Ray, default experts, bundled data
    python jobs/main.py --train-per-domain 30 --test-per-domain 50 --iterations 30   # bigger
    ray job submit --working-dir . -- python jobs/main.py --output-dir /abs/out/main

The defaults fit 30 minutes on 2 CPU cores with a cold response cache (the cache is shared with the
other jobs, so a re-run is mostly cache hits). GSM8K is left out by default: its train split is not
shipped offline and its chains of thought dominate CPU time. Each stage is the other job's own
``main(argv)``, run in this process, so the stages behave exactly as when run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

JOBS = Path(__file__).resolve().parent


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--experts", nargs="*", help="subset of expert names (default: all)")
    p.add_argument("--domains", nargs="*", default=["triviaqa", "piqa", "nq_open"],
                   help="routing domains (train/dev/test rows from the same seeded split)")
    p.add_argument("--train-per-domain", type=int, default=10, help="router training questions per domain")
    p.add_argument("--test-per-domain", type=int, default=10, help="held-out questions per domain")
    p.add_argument("--dev-per-domain", type=int, default=4,
                   help="dev questions (router checkpoint selection, best-per-domain baseline)")
    p.add_argument("--depth", type=int, default=1, help="KTP steps pre-computed after step 0")
    p.add_argument("--iterations", type=int, default=8, help="PPO iterations")
    p.add_argument("--train-batch-size", type=int, default=128, help="env steps per PPO iteration")
    p.add_argument("--t-max", type=int, default=3, help="most experts called per question")
    p.add_argument("--cost-coef", type=float, default=0.1, help="λ: reward per billion parameters called")
    p.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm", help="router state encoder")
    p.add_argument("--fusion-tasks", nargs="*", default=["triviaqa"], help="fusion tasks (none: skip)")
    p.add_argument("--fusion-per-task", type=int, default=3, help="fusion test questions per task")
    p.add_argument("--fusion-dev-per-task", type=int, default=2,
                   help="dev questions choosing the main member")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="out/main", help="report and stage outputs (made absolute)")
    p.add_argument("--cache-dir", help="model cache root (default $DER_RAY_CACHE or ~/.cache/der_ray)")
    p.add_argument("--responses-dir", help="response cache (default <cache root>/responses)")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def load_job(name: str) -> ModuleType:
    """Import ``jobs/<name>.py`` (the jobs are scripts beside this one, not a package)."""
    spec = importlib.util.spec_from_file_location(f"der_ray_job_{name}", JOBS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_plan(args: argparse.Namespace, out: Path) -> list[tuple[str, str | None, list[str]]]:
    """(stage, job, argv) in order; job None is the stage that starts the expert actors."""
    pool = ["--pool", args.pool] if args.pool else []
    address = ["--address", args.address] if args.address else []
    common = [*pool, *(["--experts", *args.experts] if args.experts else []), *address]
    # "--domain-size" with no values: every domain gets the per-domain count (no GSM8K override)
    routing = [*common, "--domains", *args.domains, "--domain-size", "--seed", str(args.seed),
               *(["--cache-dir", args.responses_dir] if args.responses_dir else [])]
    router = ["--t-max", str(args.t_max), "--cost-coef", str(args.cost_coef), "--encoder", args.encoder]
    model_cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    plan: list[tuple[str, str | None, list[str]]] = [
        ("prepare", "prepare_models", [*common, *model_cache]),
        ("experts", None, []),
        ("cache", "build_cache", [*routing, "--split", "train", "--per-domain", str(args.train_per_domain),
                                  "--depth", str(args.depth), "--report", str(out / "build_cache.json")]),
        ("train", "train_router", [*routing, *router, "--per-domain", str(args.train_per_domain),
                                   "--iterations", str(args.iterations),
                                   "--train-batch-size", str(args.train_batch_size),
                                   "--dev-per-domain", str(args.dev_per_domain), "--dev-domain-size",
                                   "--storage", str(out / "router"), "--no-resume"]),
        ("evaluate", "evaluate_router", [*routing, *router, "--checkpoint", str(out / "router"),
                                         "--per-domain", str(args.test_per_domain),
                                         "--dev-per-domain", str(args.dev_per_domain), "--dev-domain-size",
                                         "--output-dir", str(out)]),
    ]
    if args.fusion_tasks:
        members = ["--members", *args.experts] if args.experts else []
        plan.append(("fusion", "evaluate_fusion", [
            *pool, *members, *address, "--tasks", *args.fusion_tasks, "--per-task", str(args.fusion_per_task),
            "--dev-per-task", str(args.fusion_dev_per_task), "--seed", str(args.seed),
            "--output-dir", str(out)]))
    return plan


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    import json

    from der_ray.config import load_pool_config
    from der_ray.errors import DerRayError
    from der_ray.evals.report import write_atomic, write_json
    from der_ray.experts.actors import ExpertPool
    from der_ray.runtime import connect_ray, set_threads, setup_logging

    setup_logging()
    set_threads(1)
    t0 = time.perf_counter()
    out = Path(args.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    pool_cfg = load_pool_config(args.pool).select(args.experts)
    plan = stage_plan(args, out)
    names = [name for name, _, _ in plan] + ["report"]
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        print(f"\n=== [{names.index(name) + 1}/{len(names)}] {name} "
              f"({time.perf_counter() - t0:.0f} s elapsed) ===", flush=True)
        t = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - t, 1)

    for name, job, argv in plan:
        with stage(name):
            if job is None:  # the expert actors, held until the end: stages find them by name
                connect_ray(stack, args.address, namespace=pool_cfg.namespace)
                print(f"starting {len(pool_cfg.experts)} expert actors ...", flush=True)
                stack.enter_context(ExpertPool(pool_cfg, cache_dir=args.cache_dir))
                continue
            code = load_job(job).main(argv)
            if code != 0:  # the stage has printed its error; the main job fails with its code
                print(f"error: stage {name} (jobs/{job}.py) failed with exit code {code}", file=sys.stderr)
                return int(code)
    with stage("report"):
        timings["total"] = round(time.perf_counter() - t0, 1)
        try:
            routing_eval = json.loads((out / "routing_eval.json").read_text())
            fusion_eval = json.loads((out / "fusion_eval.json").read_text()) if args.fusion_tasks else None
            cache_stats = json.loads((out / "build_cache.json").read_text())
        except (OSError, ValueError) as e:
            raise DerRayError(f"a stage did not leave its results in {out}: {e}") from e
        routing_eval.pop("per_question", None)
        report = {"config": vars(args), "experts": list(pool_cfg.names), "timings_s": timings,
                  "cache": cache_stats, "routing": routing_eval, "fusion": fusion_eval,
                  "files": {n: str(out / n) for n in ("routing_eval.md", "routing_eval.png", "router")}}
        write_json(out / "report.json", report)
        write_atomic(out / "report.md", render_markdown(report, out))
    print(f"\nreport: {out / 'report.md'} (and report.json; {timings['total']:.0f} s in all)")
    return 0


def _section(path: Path) -> str:
    """A stage's Markdown report without its own title, headings demoted under ours."""
    lines = path.read_text().splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in body).strip()


def render_markdown(report: dict[str, Any], out: Path) -> str:
    r, cfg, t = report["routing"], report["config"], report["timings_s"]
    der = r["systems"].get("der", {})
    best = r.get("best_single")
    headline = ""
    if der and best in r["systems"]:
        b = r["systems"][best]
        headline = (f"DER: quality {der['quality']['mean']:.3f} at {der['params_b']:.3f} B parameters per "
                    f"question; best single expert ({best}): {b['quality']['mean']:.3f} at "
                    f"{b['params_b']:.3f} B.\n\n")
    cache = report["cache"]
    parts = [
        "# der_ray main job\n",
        f"Experts: {', '.join(report['experts'])}. Domains: {', '.join(cfg['domains'])}; "
        f"{cfg['train_per_domain']} train / {cfg['dev_per_domain']} dev / {cfg['test_per_domain']} test "
        f"questions per domain (seed {cfg['seed']}). Router: PPO, {cfg['iterations']} iterations x "
        f"{cfg['train_batch_size']} steps, t_max {cfg['t_max']}, λ {cfg['cost_coef']}, {cfg['encoder']} "
        f"encoder.\n",
        f"Response cache: {cache['puts']} new LLM calls, {cache['hits']} hits ({cache['cache_dir']}).\n",
        "## DER routing vs baselines (held-out questions)\n",
        headline + _section(out / "routing_eval.md") + "\n",
        "![quality vs cost](routing_eval.png)\n",
    ]
    if report["fusion"] is not None:
        parts += ["## DeePEn fusion (a few questions)\n", _section(out / "fusion_eval.md") + "\n"]
    rows = "".join(f"| {k} | {v} |\n" for k, v in t.items())
    parts += ["## Wall time (s)\n", "| stage | s |\n|---|---|\n" + rows]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
