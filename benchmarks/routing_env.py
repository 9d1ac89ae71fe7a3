"""Routing environment throughput and response-cache behaviour, side by side in one run.

    .venv/bin/python benchmarks/routing_env.py                 # after jobs/build_cache.py filled the cache
    .venv/bin/python benchmarks/routing_env.py --tiny          # tiny in-process experts, no assets needed

Runs random-policy episodes of the real ``RoutingEnv`` (t_max 2, so every step is covered by a depth-1
precompute) over the questions ``build_cache.py`` used, several passes taking the same random route
per question: pass 1 is whatever the cache holds; later passes repeat the same calls (cache and
state encoder warm), where the target is >= 300 env steps/s, and their cache hit rate shows that
repeated epochs make no new LLM calls. Writes results/routing_env.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", help="expert pool YAML (default: the packaged three experts)")
    p.add_argument("--domains", nargs="*", default=["triviaqa", "gsm8k", "piqa", "nq_open"])
    p.add_argument("--per-domain", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm")
    p.add_argument("--cache-dir", help="response cache (default <cache root>/responses)")
    p.add_argument("--tiny", action="store_true", help="tiny random in-process experts (CI-sized)")
    p.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from der_ray import data
    from der_ray.config import RouterConfig, load_pool_config, pool_from_dict
    from der_ray.evals.report import write_atomic, write_json
    from der_ray.routing.env import RoutingEnv, build_env_config, responses_dir

    if args.tiny:
        from der_ray.experts.tiny import build_tiny_expert

        root = Path(tempfile.mkdtemp(prefix="der_ray_bench_"))
        a, b = build_tiny_expert(root / "a", "byte_bpe"), build_tiny_expert(root / "b", "sentencepiece")
        pool = pool_from_dict({"experts": [
            {"name": "tiny-a", "source": f"dir:{a}", "params_b": 0.001},
            {"name": "tiny-b", "source": f"dir:{b}", "params_b": 0.002, "prompt": {"format": "completion"}}]})
        responses = str(root / "responses")
    else:
        pool = load_pool_config(args.pool)
        responses = responses_dir(args.cache_dir)
    router = RouterConfig(t_max=2, encoder=args.encoder)
    examples = list(data.iter_examples(data.split_mix(args.domains, "train", args.per_domain, args.seed)))
    rows = [ex.to_row() for ex in examples]
    env = RoutingEnv(build_env_config(pool, router, examples, experts="local", cache=responses,
                                      seed=args.seed))
    load_avg_before = os.getloadavg()
    passes = []
    t_setup = time.perf_counter()
    env.reset(options={"example": rows[0]})  # builds experts, cache and encoder
    setup_s = time.perf_counter() - t_setup
    for p in range(args.passes):
        steps = hits = misses = 0
        t0 = time.perf_counter()
        for i, row in enumerate(rows):
            rng = np.random.default_rng([args.seed, i])  # the same random route in every pass
            obs, _ = env.reset(options={"example": row})
            done = False
            while not done:
                action = int(rng.choice(np.flatnonzero(obs["action_mask"])))
                obs, _, done, _, info = env.step(action)
                steps += 1
            hits += info["cache_hits"]
            misses += info["cache_misses"]
        wall = time.perf_counter() - t0
        passes.append({"pass": p + 1, "episodes": len(rows), "steps": steps, "wall_s": round(wall, 3),
                       "steps_per_s": round(steps / wall, 1), "cache_hits": hits, "llm_calls": misses,
                       "hit_rate": round(hits / max(1, hits + misses), 4)})
        print(passes[-1], flush=True)
    env.close()
    warm = passes[-1]
    result = {
        "config": vars(args), "experts": list(pool.names), "setup_s": round(setup_s, 2), "passes": passes,
        "targets": {"warm_steps_per_s>=300": warm["steps_per_s"] >= 300,
                    "repeat_pass_hit_rate>=0.9": warm["hit_rate"] >= 0.9},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_before": load_avg_before, "load_avg_after": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.output_dir)
    name = "routing_env_tiny" if args.tiny else "routing_env"
    write_json(out / f"{name}.json", result)
    lines = ["| pass | episodes | env steps | steps/s | cache hit rate | LLM calls |", "|---" * 6 + "|"]
    lines += [f"| {r['pass']} | {r['episodes']} | {r['steps']} | {r['steps_per_s']} | {r['hit_rate']:.2f} | "
              f"{r['llm_calls']} |" for r in passes]
    footer = (f"experts: {', '.join(pool.names)}; encoder {args.encoder}; targets: {result['targets']}; "
              f"load average before/after {load_avg_before} / {result['machine']['load_avg_after']}")
    write_atomic(out / f"{name}.md", "# Routing env throughput\n\n" + "\n".join(lines) + f"\n\n{footer}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
