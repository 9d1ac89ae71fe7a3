"""Prepare the expert pool's models: build every ``asset:`` expert (assemble, verify, convert; instant
when done before) and check that ``dir:`` experts exist. Hub ids (``hf:``) are left to the loader.

    python jobs/prepare_models.py                                  # the packaged pool, this machine
    python jobs/prepare_models.py --config my_pool.yaml --report /abs/out/prepared.json
    ray job submit --working-dir . -- python jobs/prepare_models.py --every-node

--every-node runs the same preparation as a Ray task pinned to each alive node (a cluster's GPU workers
load experts from their own disk); without it nothing starts Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from der_ray.config import PoolConfig


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", "--config", dest="pool", help="expert pool YAML (default: packaged)")
    p.add_argument("--experts", nargs="*", help="subset of expert names (default: all)")
    p.add_argument("--cache-dir", help="model cache root (default $DER_RAY_CACHE or ~/.cache/der_ray)")
    p.add_argument("--every-node", action="store_true", help="prepare on every alive Ray node")
    p.add_argument("--report", help="also write {node: {expert: model dir}} as JSON to this path")
    p.add_argument("--address", help="Ray address for --every-node (default: $RAY_ADDRESS, else local)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.runtime import run_main

    return run_main(lambda stack: _run(args, stack))


def prepare_pool(pool_cfg: PoolConfig, cache_dir: str | None, progress: bool) -> dict[str, str]:
    """Prepare or check every expert of ``pool_cfg`` on this machine; returns name -> model dir/hub id."""
    from der_ray.assets import prepare
    from der_ray.config import split_source
    from der_ray.experts.loading import resolve_source

    out = {}
    for e in pool_cfg.experts:
        kind, name = split_source(e.source)
        if kind == "asset":  # direct call: resolve_source would prepare without progress bars
            out[e.name] = str(prepare(name, cache_dir or pool_cfg.cache_dir, progress=progress))
        else:
            out[e.name] = resolve_source(e, cache_dir)  # dir: must exist (AssetMissingError otherwise)
    return out


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    import json
    import socket

    from der_ray.config import load_pool_config
    from der_ray.runtime import setup_logging

    setup_logging()
    pool_cfg = load_pool_config(args.pool).select(args.experts)
    if args.every_node:
        results = _on_every_node(stack, args, pool_cfg)
    else:
        results = {socket.gethostname(): prepare_pool(pool_cfg, args.cache_dir, not args.no_progress)}
    for node, dirs in results.items():
        for name, where in dirs.items():
            print(f"{node}\t{name}\t{where}", flush=True)
    if args.report:
        report = Path(args.report).expanduser().resolve()
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(results, indent=2) + "\n")
        print(f"report: {report}")
    return 0


def _on_every_node(stack: contextlib.ExitStack, args: argparse.Namespace,
                   pool_cfg: PoolConfig) -> dict[str, dict[str, str]]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from der_ray.runtime import connect_ray

    connect_ray(stack, args.address)
    task = ray.remote(num_cpus=0)(prepare_pool)  # no CPU slot: it must not wait behind running actors
    nodes = [n for n in ray.nodes() if n["Alive"]]
    refs = {n["NodeManagerAddress"] + ":" + n["NodeID"][:8]: task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            pool_cfg, args.cache_dir, False) for n in nodes}
    print(f"preparing {len(pool_cfg.experts)} experts on {len(refs)} node(s) ...", flush=True)
    return {node: ray.get(ref) for node, ref in refs.items()}


if __name__ == "__main__":
    sys.exit(main())
