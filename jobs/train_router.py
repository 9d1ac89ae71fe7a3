"""Train the DER router with RLlib PPO over the expert actors and the shared response cache.

    python jobs/train_router.py --storage /abs/out/router                  # local Ray
    ray job submit --working-dir . -- python jobs/train_router.py --storage /abs/out/router

First it prints each expert's mean step-0 score per domain on the training rows (what PPO can learn;
with --no-cache these are live calls) and on the dev rows, and names the domains where the two
disagree on the best expert. Checkpoints land in <storage>/checkpoints/iter_<n> (LATEST
names the newest); re-running the same command after a kill resumes from LATEST. Every
--select-every iterations the policy is run greedily on the dev rows and the best one so far (dev
quality - lambda x params) is kept as checkpoints/BEST, which evaluate_router and Serve route with;
--dev-per-domain 0 turns this off. --local runs the experts in-process and the env in the driver (no
expert actors, no remote env runners) so that breakpoints work.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from der_ray.config import DOMAIN_SIZE_HELP, JOB_T_MAX, JOB_TRAIN_PER_DOMAIN, T_MAX_HELP, TrainConfig


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--experts", nargs="*", help="subset of expert names")
    p.add_argument("--domains", nargs="*", default=["triviaqa", "gsm8k", "piqa", "nq_open"])
    p.add_argument("--per-domain", type=int, default=JOB_TRAIN_PER_DOMAIN,
                   help="training questions per domain")
    p.add_argument("--domain-size", nargs="*", default=[], metavar="DOMAIN=N", help=DOMAIN_SIZE_HELP)
    p.add_argument("--dev-per-domain", type=int, default=20,
                   help="dev questions per domain for checkpoint selection (0: keep the last iterate)")
    p.add_argument("--dev-domain-size", nargs="*", default=["gsm8k=6"], metavar="DOMAIN=N")
    p.add_argument("--select-every", type=int, default=5, help="iterations between dev selections")
    p.add_argument("--seed", type=int, default=0, help="data split and PPO seed")
    p.add_argument("--ppo-seed", type=int, help="PPO and env sampling seed only (default: --seed); "
                   "another value reuses the same questions and so their cached answers")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--train-batch-size", type=int, default=512)
    p.add_argument("--cost-coef", type=float, default=0.1, help="lambda of the reward's cost term")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="PPO learning rate")
    p.add_argument("--num-epochs", type=int, default=TrainConfig.num_epochs,
                   help="SGD passes over each training batch")
    p.add_argument("--minibatch-size", type=int, default=TrainConfig.minibatch_size)
    p.add_argument("--entropy-coeff", type=float, default=TrainConfig.entropy_coeff)
    p.add_argument("--hidden", type=int, nargs="*", default=list(TrainConfig.hidden),
                   help="policy/value MLP layer sizes (none: linear on the observation)")
    p.add_argument("--t-max", type=int, default=JOB_T_MAX, help=T_MAX_HELP)
    p.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm")
    p.add_argument("--num-env-runners", type=int, default=0)
    p.add_argument("--storage", default="out/router", help="checkpoint directory (made absolute)")
    p.add_argument("--cache-dir", help="response cache (default <cache root>/responses)")
    p.add_argument("--no-cache", action="store_true", help="call experts for every step")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing LATEST checkpoint")
    p.add_argument("--local", action="store_true", help="experts in-process, env in the driver")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from der_ray import data
    from der_ray.config import RewardConfig, RouterConfig, load_pool_config
    from der_ray.evals.routing_eval import dev_selector, domain_skills, skill_disagreements
    from der_ray.routing.algo import EPISODE_RETURN_MEAN, build_ppo_config, get_metric
    from der_ray.routing.encoder import StateEncoder
    from der_ray.routing.env import RoutingEnv, build_env_config, make_callers, responses_dir
    from der_ray.routing.episode import RoutingTask
    from der_ray.routing.metrics import (
        CACHE_HIT_RATE,
        CALLS,
        LLM_CALLS,
        PARAMS_B,
        QUALITY,
        RouterMetrics,
        prefixed,
    )
    from der_ray.routing.training import train_router
    from der_ray.runtime import connect_ray, set_threads, setup_logging

    setup_logging()
    set_threads(1)
    pool = load_pool_config(args.pool).select(args.experts)
    router = RouterConfig(reward=RewardConfig(cost_coef=args.cost_coef), t_max=args.t_max,
                          encoder=args.encoder)
    ppo_seed = args.seed if args.ppo_seed is None else args.ppo_seed
    train = TrainConfig(iterations=args.iterations, train_batch_size=args.train_batch_size, lr=args.lr,
                        num_epochs=args.num_epochs, entropy_coeff=args.entropy_coeff,
                        minibatch_size=min(args.minibatch_size, args.train_batch_size),
                        num_env_runners=0 if args.local else args.num_env_runners, seed=ppo_seed,
                        hidden=tuple(args.hidden))
    train_rows = list(data.iter_examples(data.split_mix(
        args.domains, "train", data.domain_sizes(args.domains, args.per_domain, args.domain_size),
        args.seed)))
    env_config = build_env_config(pool, router, train_rows, experts="local" if args.local else "actors",
                                  cache=None if args.no_cache else responses_dir(args.cache_dir),
                                  seed=ppo_seed)
    connect_ray(stack, args.address)
    if not args.local:
        from der_ray.experts.actors import ExpertPool

        print(f"starting {len(pool.experts)} expert actors ...", flush=True)
        # Keep the pool (its handles) for the whole job: a non-detached actor dies with its last handle.
        stack.enter_context(ExpertPool(pool))
    storage = Path(args.storage).expanduser().resolve()
    callers = make_callers(pool, "local" if args.local else "actors",
                           None if args.no_cache else responses_dir(args.cache_dir))
    task = RoutingTask(pool, router, callers, StateEncoder(router.encoder))
    # PPO can only learn the skills its training rows show (20 GSM8K rows once held 1 Qwen success).
    train_skills = domain_skills(task, train_rows)
    print(skills_table(train_skills, train_rows, "training rows"), flush=True)
    select = None
    if args.dev_per_domain > 0:
        dev_rows = list(data.iter_examples(data.split_mix(
            args.domains, "dev", data.domain_sizes(args.domains, args.dev_per_domain, args.dev_domain_size),
            args.seed)))
        dev_skills = domain_skills(task, dev_rows)
        print(skills_table(dev_skills, dev_rows, "dev rows"), flush=True)
        for domain, (on_train, on_dev) in skill_disagreements(task, train_skills, dev_skills).items():
            print(f"note: {domain}: the training rows favour {on_train}, the dev rows {on_dev}; PPO learns "
                  "the former (one of the samples is too small to tell these experts apart)", flush=True)
        select = dev_selector(task, dev_rows, args.cost_coef, progress=lambda msg: print(msg, flush=True))

    def report(it: int, result: dict) -> None:
        def m(name: str) -> float:
            return float(get_metric(result, name, float("nan")))

        print(f"iter {it:3d}  return {m(EPISODE_RETURN_MEAN):7.3f}  quality {m(prefixed(QUALITY)):.3f}  "
              f"calls {m(prefixed(CALLS)):.2f}  params_b {m(prefixed(PARAMS_B)):.3f}  "
              f"cache hits {m(prefixed(CACHE_HIT_RATE)):.2f}  "
              f"LLM calls/episode {m(prefixed(LLM_CALLS)):.2f}", flush=True)

    outcome = train_router(build_ppo_config(RoutingEnv, env_config, train, callbacks=RouterMetrics),
                           train, storage, resume=not args.no_resume, on_result=report,
                           select=select, select_every=args.select_every)
    print(f"checkpoint: {outcome.checkpoint} (iterations {outcome.resumed_from} -> {outcome.iterations})")
    if outcome.best is not None:
        print(f"best on dev: {outcome.best} (objective {outcome.best_score:.4f})")
    return 0


def skills_table(skills: dict[str, dict[str, float]], rows: list[Any], title: str) -> str:
    """The rows' mean step-0 score per domain and expert, as aligned text."""
    names = list(next(iter(skills.values())))
    lines = [f"{title}: step-0 quality per domain ({len(rows)} questions)",
             f"  {'domain':12s} {'n':>4s}  " + "  ".join(f"{n[:18]:>18s}" for n in names)]
    for domain, quality in skills.items():
        n = sum(ex.domain == domain for ex in rows)
        lines.append(f"  {domain:12s} {n:4d}  " + "  ".join(f"{quality[e]:18.3f}" for e in names))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
