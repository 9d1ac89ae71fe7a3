"""Evaluate a trained DER router against baselines on held-out questions.

    python jobs/evaluate_router.py --checkpoint /abs/out/router --output-dir benchmarks/results

Test rows come from the "test" part of the seeded split (disjoint from training rows), the
best-expert-per-domain baseline is chosen on "dev" rows. Writes routing_eval.{json,md,png}.
Without --checkpoint only the baselines are evaluated.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from der_ray.config import DOMAIN_SIZE_HELP, JOB_T_MAX, T_MAX_HELP


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="training storage dir (uses BEST, else LATEST) or a checkpoint dir")
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--experts", nargs="*")
    p.add_argument("--domains", nargs="*", default=["triviaqa", "gsm8k", "piqa", "nq_open"])
    # 3 x 90 + 30 GSM8K = 300 held-out questions: GSM8K's 256-token chains dominate the CPU time.
    p.add_argument("--per-domain", type=int, default=90, help="test questions per domain")
    p.add_argument("--domain-size", nargs="*", default=["gsm8k=30"], metavar="DOMAIN=N",
                   help=DOMAIN_SIZE_HELP)
    p.add_argument("--dev-per-domain", type=int, default=20, help="dev questions per domain")
    p.add_argument("--dev-domain-size", nargs="*", default=["gsm8k=6"], metavar="DOMAIN=N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost-coef", type=float, default=0.1)
    p.add_argument("--t-max", type=int, default=JOB_T_MAX, help=T_MAX_HELP)
    p.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm")
    p.add_argument("--cache-dir", help="response cache (default <cache root>/responses)")
    p.add_argument("--output-dir", default="benchmarks/results")
    p.add_argument("--local", action="store_true", help="experts in-process instead of actors")
    p.add_argument("--address")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from der_ray import data
    from der_ray.config import RewardConfig, RouterConfig, load_pool_config
    from der_ray.evals.report import write_atomic, write_json
    from der_ray.evals.routing_eval import evaluate_systems, markdown, scatter_png, summarize_systems
    from der_ray.routing.encoder import StateEncoder
    from der_ray.routing.env import make_callers, responses_dir
    from der_ray.routing.episode import RoutingTask
    from der_ray.routing.router import Router
    from der_ray.routing.training import policy_checkpoint
    from der_ray.runtime import connect_ray, set_threads, setup_logging

    setup_logging()
    set_threads(1)
    t0 = time.perf_counter()
    pool = load_pool_config(args.pool).select(args.experts)
    router_cfg = RouterConfig(reward=RewardConfig(cost_coef=args.cost_coef), t_max=args.t_max,
                              encoder=args.encoder)
    test = list(data.iter_examples(data.split_mix(
        args.domains, "test", data.domain_sizes(args.domains, args.per_domain, args.domain_size), args.seed)))
    dev = list(data.iter_examples(data.split_mix(
        args.domains, "dev", data.domain_sizes(args.domains, args.dev_per_domain, args.dev_domain_size),
        args.seed)))
    if not args.local:
        from der_ray.experts.actors import ExpertPool

        connect_ray(stack, args.address)
        stack.enter_context(ExpertPool(pool))  # handles held for the whole job
    callers = make_callers(pool, "local" if args.local else "actors", responses_dir(args.cache_dir))
    task = RoutingTask(pool, router_cfg, callers, StateEncoder(router_cfg.encoder))
    der_actions, ckpt = None, None
    if args.checkpoint:
        ckpt = Path(args.checkpoint).expanduser().resolve()
        ckpt = policy_checkpoint(ckpt) or ckpt
        der_actions = Router.from_checkpoint(ckpt, pool, router_cfg, callers).actions
    systems = evaluate_systems(task, test, dev, der_actions, seed=args.seed,
                               progress=lambda msg: print(msg, flush=True))
    summary = summarize_systems(systems, seed=args.seed)
    summary.update({"wall_s": round(time.perf_counter() - t0, 1), "n_test": len(test), "n_dev": len(dev),
                    "domains": args.domains, "checkpoint": ckpt and str(ckpt), "seed": args.seed})
    out = Path(args.output_dir).expanduser().resolve()
    table = markdown(summary)
    write_json(out / "routing_eval.json", {**summary, "per_question": systems})
    write_atomic(out / "routing_eval.md", f"# DER routing evaluation\n\n{table}\n\n"
                 f"test questions: {len(test)}; wall time {summary['wall_s']} s\n")
    scatter_png(summary, str(out / "routing_eval.png"))
    print(table)
    print(f"\nresults: {out / 'routing_eval.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
