"""Precompute the DER response cache: step-0 answers and KTP chains of every expert, in parallel.

    python jobs/build_cache.py --domains triviaqa gsm8k piqa nq_open --per-domain 60 --split train
    ray job submit --working-dir . -- python jobs/build_cache.py --cache-dir /abs/cache/responses

Questions come from ``data.split_mix`` (the same seeded train/dev/test split as training and
evaluation). Every call is built by ``routing.ktp.expert_call``, so PPO's env meets the same keys.
All experts get their whole batch list submitted before any result is awaited. Prints hits, misses,
unique calls and the wall time; a second run with the same flags is all hits.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from der_ray.config import DOMAIN_SIZE_HELP, JOB_TRAIN_PER_DOMAIN


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--router-config", help="YAML with the router section (KTP template, token budgets)")
    p.add_argument("--experts", nargs="*", help="subset of expert names (default: all)")
    p.add_argument("--domains", nargs="*", default=["triviaqa", "gsm8k", "piqa", "nq_open"])
    p.add_argument("--per-domain", type=int, default=JOB_TRAIN_PER_DOMAIN, help="questions per domain")
    p.add_argument("--domain-size", nargs="*", default=[], metavar="DOMAIN=N", help=DOMAIN_SIZE_HELP)
    p.add_argument("--split", default="train", help="part of the seeded 0.6/0.2/0.2 split: train, dev, test")
    p.add_argument("--seed", type=int, default=0, help="split and sample seed")
    p.add_argument("--depth", type=int, default=1, help="KTP steps after step 0 (0: step-0 answers only)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="items per expert call (a batch of 256-token chains must finish within the timeout)")
    p.add_argument("--call-timeout", type=float, default=3600.0,
                   help="seconds to wait for one batched expert call (the pool's per-request timeout is "
                        "sized for single answers; a batch of GSM8K chains on a loaded CPU takes longer)")
    p.add_argument("--cache-dir", help="response cache (default <cache root>/responses)")
    p.add_argument("--report", help="also write the stats as JSON to this path")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    import json

    import yaml
    from tqdm import tqdm

    from der_ray import data
    from der_ray.config import load_pool_config, router_from_dict
    from der_ray.errors import ConfigError
    from der_ray.experts.actors import ExpertPool
    from der_ray.paths import cache_dir
    from der_ray.routing.cache import ResponseCache
    from der_ray.routing.cached import CachedExpert, precompute_chains
    from der_ray.runtime import connect_ray, setup_logging

    setup_logging()
    t0 = time.perf_counter()
    pool_cfg = load_pool_config(args.pool).select(args.experts)
    router_data = {}
    if args.router_config:
        path = Path(args.router_config)
        if not path.is_file():
            raise ConfigError(f"router config not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        router_data = loaded.get("router", loaded) if isinstance(loaded, dict) else loaded
    router = router_from_dict(router_data)
    root = Path(args.cache_dir or router.cache_dir or cache_dir(pool_cfg.cache_dir) / "responses")
    root = root.expanduser().resolve()
    examples = list(data.iter_examples(
        data.split_mix(args.domains, args.split,
                       data.domain_sizes(args.domains, args.per_domain, args.domain_size), args.seed)))

    connect_ray(stack, args.address, namespace=pool_cfg.namespace)
    # Actors this job creates are owned by it and end with it (or with the last handle); live
    # actors of the same name (a training job's) are reused and left alone.
    print(f"starting {len(pool_cfg.experts)} expert actors ...", flush=True)
    remotes = ExpertPool(pool_cfg).start()
    for r in remotes.values():
        r.timeout_s = args.call_timeout
    fingerprints = {n: r.fingerprint() for n, r in remotes.items()}
    with ResponseCache(root) as cache:
        cached = {n: CachedExpert(n, r, fingerprints[n], cache,
                                  default_temperature=pool_cfg.expert(n).generation.temperature)
                  for n, r in remotes.items()}
        formats = {n: pool_cfg.expert(n).prompt.format for n in remotes}
        print(f"{len(examples)} questions x {len(cached)} experts, depth {args.depth} -> {root}",
              flush=True)
        t_fill = time.perf_counter()
        with tqdm(desc="expert calls", unit="call", disable=args.no_progress) as bar:
            asked = precompute_chains(cached, formats, examples, router, depth=args.depth,
                                      batch_size=args.batch_size, progress=bar.update)
        stats = cache.stats()
        fill_s = time.perf_counter() - t_fill
    stats.update(asked_per_step=asked, wall_s=round(time.perf_counter() - t0, 2), fill_s=round(fill_s, 2),
                 cache_dir=str(root), questions=len(examples))
    print(f"hits {stats['hits']}  misses {stats['misses']}  unique LLM calls {stats['puts']}  "
          f"hit rate {stats['hit_rate']:.1%}  records {stats['records']}  "
          f"wall {stats['wall_s']} s (filling {stats['fill_s']} s)")
    for name, s in stats["experts"].items():
        print(f"  {name:24s} hits {s['hits']:6d}  misses {s['misses']:6d}  calls {s['puts']:6d}")
    if args.report:
        report = Path(args.report).expanduser().resolve()
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(stats, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
