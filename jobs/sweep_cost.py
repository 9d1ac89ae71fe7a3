"""Sweep the DER reward's cost coefficient λ with Ray Tune: quality-vs-cost Pareto front, calibration.

    python jobs/sweep_cost.py --storage /abs/out/tune --output-dir /abs/out/sweep      # local Ray
    ray job submit --working-dir . -- python jobs/sweep_cost.py --grid 0 0.1 0.5 --seeds 0 1 \\
        --storage /abs/out/tune --output-dir /abs/out/sweep --target-cost 0.5

One Tune trial per (λ, seed): PPO on the shared response cache, then the final checkpoint is evaluated
greedily on held-out test rows. Outputs in --output-dir: sweep_results.json (per trial: λ, seed,
checkpoint, held-out quality/cost/usage, final training metrics), sweep_pareto.md (mean ± std per λ,
Pareto flags, monotonicity check "mean cost does not increase as λ increases" with violations and their
seeds), sweep_pareto.png (baselines from --baselines routing_eval.json overlaid) and, with
--target-cost X, router_calibrated.json: the λ and checkpoint with the best quality at mean cost <= X
(or --target-share S: at most a share S of the calls to the largest expert, as RouteLLM calibrates)
(parameters in billions per question). No trial within the budget exits with code 2.

Dashboards: every trial directory under <storage>/<name>/ has progress.csv, result.json and TensorBoard
events (metrics under ray/tune/env_runners/router_*):

    pip install tensorboard && tensorboard --logdir <storage>/<name>

An interrupted sweep resumes with --resume (Tuner.restore of <storage>/<name>; errored trials re-run).
--local runs the experts in-process in every trial instead of shared expert actors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from der_ray.config import DOMAIN_SIZE_HELP, JOB_T_MAX, JOB_TRAIN_PER_DOMAIN, T_MAX_HELP


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--experts", nargs="*", help="subset of expert names")
    p.add_argument("--domains", nargs="*", default=["triviaqa", "gsm8k", "piqa", "nq_open"])
    p.add_argument("--per-domain", type=int, default=JOB_TRAIN_PER_DOMAIN,
                   help="training questions per domain")
    p.add_argument("--domain-size", nargs="*", default=[], metavar="DOMAIN=N", help=DOMAIN_SIZE_HELP)
    p.add_argument("--test-per-domain", type=int, default=20, help="held-out questions per domain (0: none)")
    p.add_argument("--test-domain-size", nargs="*", default=[], metavar="DOMAIN=N")
    p.add_argument("--seed", type=int, default=0, help="data split seed")
    p.add_argument("--grid", type=float, nargs="*", default=None,
                   help="λ values (cost units: reward per billion parameters called); default "
                        "0 0.05 0.1 0.2 0.5 1")
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="PPO seeds per λ")
    p.add_argument("--iterations", type=int, default=30, help="training iterations per trial")
    p.add_argument("--train-batch-size", type=int, default=512)
    p.add_argument("--t-max", type=int, default=JOB_T_MAX, help=T_MAX_HELP)
    p.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--cpus-per-trial", type=float, default=0.5, help="CPUs of a trial (main + learner)")
    p.add_argument("--storage", default="out/tune", help="Tune storage root (made absolute)")
    p.add_argument("--name", default="cost_sweep", help="experiment name (directory under --storage)")
    p.add_argument("--output-dir", default="out/sweep", help="where the sweep_* files go")
    p.add_argument("--cache-dir", help="response cache (default <cache root>/responses)")
    p.add_argument("--no-cache", action="store_true", help="call experts for every step")
    p.add_argument("--resume", action="store_true", help="restore <storage>/<name> if it exists")
    p.add_argument("--target-cost", type=float, help="calibrate: best quality with mean cost <= this")
    p.add_argument("--target-share", type=float,
                   help="calibrate: best quality with at most this share of calls to --share-expert")
    p.add_argument("--share-expert", help="expert of --target-share (default: the largest in the pool)")
    p.add_argument("--baselines", help="routing_eval.json whose systems are overlaid on the plot")
    p.add_argument("--local", action="store_true", help="experts in-process in each trial (no actors)")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from der_ray import data
    from der_ray.config import RewardConfig, RouterConfig, TrainConfig, load_pool_config
    from der_ray.errors import ConfigError
    from der_ray.routing.algo import build_ppo_config
    from der_ray.routing.env import RoutingEnv, build_env_config, make_callers, responses_dir
    from der_ray.routing.metrics import RouterMetrics
    from der_ray.runtime import connect_ray, set_threads, setup_logging
    from der_ray.tune import pareto, sweep

    setup_logging()
    set_threads(1)
    t0 = time.perf_counter()
    grid = pareto.validate_grid(pareto.DEFAULT_GRID if args.grid is None else args.grid)
    seeds = pareto.validate_seeds(args.seeds)
    if args.target_cost is not None and not args.target_cost >= 0:
        raise ConfigError(f"--target-cost must be >= 0, got {args.target_cost}")
    if args.target_share is not None and not 0 <= args.target_share <= 1:
        raise ConfigError(f"--target-share must be in [0, 1], got {args.target_share}")
    baselines = None
    if args.baselines:
        try:
            baselines = json.loads(Path(args.baselines).read_text())["systems"]
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"--baselines {args.baselines}: not a readable routing_eval.json ({e})") from e
    pool = load_pool_config(args.pool).select(args.experts)
    router = RouterConfig(reward=RewardConfig(), t_max=args.t_max, encoder=args.encoder)
    train = TrainConfig(iterations=args.iterations, train_batch_size=args.train_batch_size,
                        minibatch_size=min(TrainConfig.minibatch_size, args.train_batch_size),
                        num_env_runners=0, seed=seeds[0])
    train_rows = list(data.iter_examples(data.split_mix(
        args.domains, "train", data.domain_sizes(args.domains, args.per_domain, args.domain_size),
        args.seed)))
    test = (list(data.iter_examples(data.split_mix(
        args.domains, "test", data.domain_sizes(args.domains, args.test_per_domain, args.test_domain_size),
        args.seed)))
            if args.test_per_domain > 0 else [])
    responses = None if args.no_cache else responses_dir(args.cache_dir)
    mode = "local" if args.local else "actors"
    env_config = build_env_config(pool, router, train_rows, experts=mode, cache=responses, seed=args.seed)
    router_dict = env_config["router"]
    connect_ray(stack, args.address)
    if not args.local:
        from der_ray.experts.actors import ExpertPool

        print(f"starting {len(pool.experts)} expert actors ...", flush=True)
        stack.enter_context(ExpertPool(pool))  # handles held by the driver for the whole sweep
    config = build_ppo_config(RoutingEnv, env_config, train, callbacks=RouterMetrics)
    tuner = sweep.build_tuner(config, grid=grid, seeds=seeds, storage=args.storage, name=args.name,
                              iterations=args.iterations, max_concurrent_trials=args.max_concurrent,
                              num_cpus_per_trial=args.cpus_per_trial, resume=args.resume)
    print(f"sweeping λ {list(grid)} x seeds {list(seeds)} ({len(grid) * len(seeds)} trials) ...", flush=True)
    t_fit = time.perf_counter()
    results = tuner.fit()
    fit_s = time.perf_counter() - t_fit
    trials = sweep.collect_trials(results)
    evaluate = None
    if test:
        callers = make_callers(pool, mode, responses)

        def evaluate(trial: Mapping[str, Any]) -> dict[str, Any]:
            return sweep.evaluate_checkpoint(trial["checkpoint"], pool, router_dict, callers, test)

    scored = sweep.score_trials(trials, evaluate)
    experiment = Path(args.storage).expanduser().resolve() / args.name
    # The PPO settings travel with the results: the defaults changed once (lr 3e-4 -> 1e-3, ...).
    meta = {"grid": list(grid), "seeds": list(seeds), "iterations": args.iterations, "ppo": asdict(train),
            "experiment": str(experiment), "n_train": len(train_rows), "n_test": len(test),
            "domains": args.domains, "fit_s": round(fit_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "tensorboard": f"tensorboard --logdir {experiment}"}
    out = Path(args.output_dir).expanduser().resolve()
    report = sweep.write_outputs(out, scored, meta=meta, baselines=baselines)
    print(pareto.markdown(report["points"], report["violations"]))
    failed = [t for t in scored if t.get("error")]
    if failed:
        print(f"{len(failed)} trial(s) failed: " + "; ".join(f"λ={t['cost_coef']:g} seed {t['seed']}: "
                                                             f"{t['error']}" for t in failed), flush=True)
    print(f"results: {out / sweep.RESULTS_JSON} (Tune fit {fit_s:.1f} s); dashboards: {meta['tensorboard']}")
    if args.target_cost is not None or args.target_share is not None:
        expert = None
        if args.target_share is not None:
            expert = args.share_expert or max(pool.experts, key=lambda e: e.params_b).name
        chosen = sweep.write_calibrated(out, scored, args.target_cost, target_share=args.target_share,
                                        expert=expert, pool=pool, router=router_dict)
        print(f"calibrated: λ={chosen['cost_coef']:g} (seed {chosen['seed']}) quality "
              f"{chosen['expected']['quality']:.3f} cost {chosen['expected']['cost']:.4f} -> "
              f"{out / sweep.CALIBRATED_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
