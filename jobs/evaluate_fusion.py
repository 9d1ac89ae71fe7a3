"""Evaluate DeePEn token-level fusion: each member alone vs the fusion of all members and of each pair.

    python jobs/evaluate_fusion.py --local --per-task 10 --dev-per-task 5 --tasks triviaqa nq_open

Test rows come from the "test" part of a seeded dev/test split (fusion needs no training rows); the
main member of every fusion is chosen per task on "dev" rows (highest accuracy alone). Members alone
decode greedily over their own KV-cache session (the step path fusion uses). Writes
fusion_eval.{json,md} (95% paired-bootstrap intervals for every fused-vs-member difference).
Multiple choice (arc_challenge) is scored by option likelihood under the fused distributions
(members alone: their own likelihood over the same candidates).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--members", nargs="*", help="member names (default: every expert of the pool)")
    # Defaults fit about an hour on 2 CPU cores (in-process members); GSM8K (256-token chains of
    # thought, ~1 min per fused question here) and --pairs are flags for bigger machines.
    p.add_argument("--tasks", nargs="*", default=["triviaqa", "nq_open", "arc_challenge"])
    p.add_argument("--per-task", type=int, default=200, help="test questions per task")
    p.add_argument("--dev-per-task", type=int, default=40,
                   help="dev questions per task (main member and η)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", nargs="*", default=[], metavar="TYPE=N",
                   help="per answer type overrides of der_ray.tasks.MAX_NEW_TOKENS, e.g. numeric=128")
    p.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=False,
                   help="also fuse each pair of members (triples the fused decoding time)")
    p.add_argument("--weighting", choices=["uniform", "adapt"], default="uniform",
                   help="member weights: uniform (DeePEn-Avg) or proportional to dev accuracy (Adapt)")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.15,
                   help="η of the inverse search (the official code's; used when --lr-grid is empty)")
    p.add_argument("--lr-grid", type=float, nargs="*", default=[0.15, 0.3, 0.6, 1.2],
                   help="η values tried on each task's dev rows; the best one answers the test rows")
    p.add_argument("--anchor-dir", help="persisted anchor sets (default <cache root>/anchors)")
    p.add_argument("--output-dir", default="benchmarks/results")
    p.add_argument("--name", default="fusion_eval", help="output file stem")
    p.add_argument("--note", default="", help="a line put under the Markdown title (e.g. 'preliminary')")
    p.add_argument("--local", action="store_true", help="members in-process instead of expert actors")
    p.add_argument("--address")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def _limits(items: list[str]) -> dict[str, int]:
    from der_ray.errors import ConfigError
    from der_ray.tasks import MAX_NEW_TOKENS

    out = {}
    for item in items:
        kind, _, n = item.partition("=")
        if kind not in MAX_NEW_TOKENS or not n.isdigit() or int(n) <= 0:
            raise ConfigError(f"--max-new-tokens expects TYPE=N with TYPE in {list(MAX_NEW_TOKENS)}, "
                              f"got {item!r}")
        out[kind] = int(n)
    return out


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from der_ray import data
    from der_ray.config import load_pool_config
    from der_ray.errors import ConfigError
    from der_ray.evals.fusion_eval import SPLIT_FRACTIONS, MemberSpec, evaluate_fusion, markdown
    from der_ray.evals.report import write_atomic, write_json
    from der_ray.fusion.decoder import FusionConfig
    from der_ray.paths import cache_dir
    from der_ray.runtime import connect_ray, set_threads, setup_logging

    setup_logging()
    set_threads()
    t0, load0 = time.perf_counter(), os.getloadavg()
    limits = _limits(args.max_new_tokens)
    pool = load_pool_config(args.pool).select(args.members)  # unknown name -> UnknownExpertError
    if len(pool.names) < 2:
        raise ConfigError(f"fusion needs at least two members, got {list(pool.names)}")
    config = FusionConfig(top_k=args.top_k, lr=args.lr,
                          anchor_dir=str(Path(args.anchor_dir or cache_dir(pool.cache_dir) / "anchors")))

    def rows(task: str, part: str, n: int) -> list[Any]:
        return list(data.iter_examples(data.split_mix([task], part, n, args.seed, SPLIT_FRACTIONS)))

    tasks = {t: (rows(t, "test", args.per_task), rows(t, "dev", args.dev_per_task)) for t in args.tasks}
    if args.local:
        from der_ray.experts.hf import HFExpert

        objs: dict[str, Any] = {n: HFExpert(pool.expert(n)) for n in pool.names}
    else:
        from der_ray.experts.actors import ExpertPool

        connect_ray(stack, args.address)
        experts = stack.enter_context(ExpertPool(pool))  # handles held for the whole job
        objs = {n: experts[n] for n in pool.names}
    specs = [MemberSpec(n, objs[n], pool.expert(n).prompt.format, tuple(pool.expert(n).prompt.stop))
             for n in pool.names]
    summary = evaluate_fusion(specs, tasks, config=config, max_new_tokens=limits, pairs=args.pairs,
                              seed=args.seed, weighting=args.weighting, lr_grid=args.lr_grid,
                              progress=lambda msg: print(msg, flush=True))
    summary.update({"wall_s": round(time.perf_counter() - t0, 1), "seed": args.seed,
                    "per_task": args.per_task, "dev_per_task": args.dev_per_task,
                    "mode": "local" if args.local else "actors",
                    "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()})
    out = Path(args.output_dir).expanduser().resolve()
    table = markdown(summary)
    write_json(out / f"{args.name}.json", summary)
    note = f"{args.note}\n\n" if args.note else ""
    write_atomic(out / f"{args.name}.md", f"# DeePEn fusion evaluation\n\n{note}{table}\n"
                 f"members: {', '.join(summary['members'])}; mode {summary['mode']}; seed {args.seed}; "
                 f"wall time {summary['wall_s']} s; load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} "
                 f"on {os.cpu_count()} cores\n")
    print(table)
    print(f"\nresults: {out / f'{args.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
