"""The main job on the embedded default: prepare the experts, start them as Ray actors, answer a
seeded multi-domain slice with each, score, and write a report.

    python jobs/main.py                                   # local Ray, default experts, bundled data
    ray job submit --working-dir . -- python jobs/main.py --output-dir /abs/out

(Until routing and fusion land this is the end-to-end smoke run of the foundation.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--experts", nargs="*", help="subset of expert names (default: all)")
    p.add_argument("--domains", nargs="*", default=["gsm8k", "triviaqa", "nq_open", "arc_challenge",
                                                    "piqa", "mmlu"])
    p.add_argument("--per-domain", type=int, default=2, help="questions per domain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--numeric-max-tokens", type=int, default=192, help="GSM8K chain-of-thought budget")
    p.add_argument("--output-dir", default="out/main", help="where report.json/report.md go")
    p.add_argument("--cache-dir", help="model/data cache (default $DER_RAY_CACHE or ~/.cache/der_ray)")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from der_ray import data
    from der_ray.assets import prepare
    from der_ray.config import load_pool_config, split_source
    from der_ray.evals.answering import evaluate_pool
    from der_ray.evals.report import markdown_table, summarize, write_atomic, write_json
    from der_ray.experts.actors import ExpertPool
    from der_ray.runtime import connect_ray, set_threads, setup_logging

    setup_logging()
    set_threads(1)
    out = Path(args.output_dir).expanduser().resolve()
    t0 = time.perf_counter()
    pool_cfg = load_pool_config(args.pool).select(args.experts)
    for e in pool_cfg.experts:  # prepare in the driver so that progress bars are visible
        kind, name = split_source(e.source)
        if kind == "asset":
            prepare(name, args.cache_dir or pool_cfg.cache_dir)
    examples = list(data.iter_examples(data.multi_domain_mix(args.domains, args.per_domain, args.seed)))
    connect_ray(stack, args.address)
    pool = ExpertPool(pool_cfg, cache_dir=args.cache_dir)
    print(f"starting {len(pool_cfg.experts)} expert actors ...", flush=True)
    pool.start()
    print(f"answering {len(examples)} questions from {len(args.domains)} domains with each expert ...",
          flush=True)
    answers = evaluate_pool(pool, examples, max_new_tokens={"numeric": args.numeric_max_tokens})
    summary = summarize(answers)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["answers"] = [a.__dict__ for a in answers]
    table = markdown_table(summary)
    write_json(out / "report.json", summary)
    write_atomic(out / "report.md",
                 f"# der_ray main job\n\n{table}\n\nwall time: {summary['wall_s']} s\n")
    print(table)
    print(f"\nreport: {out / 'report.md'} ({summary['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
