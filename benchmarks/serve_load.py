"""HTTP load on the OpenAI-compatible API: the router, the fusion graph and a direct expert at
concurrency 1 / 4 / 16, all in one run against one deployment.

    .venv/bin/python benchmarks/serve_load.py --tiny                 # tiny in-test experts, ~2 min
    .venv/bin/python benchmarks/serve_load.py --router-checkpoint /abs/out/router --requests 8
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000   # an app already running

Per (target, concurrency): ``max(concurrency, --requests)`` non-streaming chat requests sent by
``concurrency`` client threads over HTTP (greedy, ``--max-tokens``, prompts cycled); p50/p99 latency,
throughput (requests/s and completion tokens/s over the level's wall time), and for the router the
share of end-to-end latency spent in its decision (``der_ray.timings_ms.router`` / client latency).
Targets (issue 6): router overhead <= 5 %; throughput at 16 >= 2.5x throughput at 1 (batching).
Without ``--router-checkpoint`` the router is an untrained module (hashing encoder): its decisions
cost the same, its routes are arbitrary. Writes results/serve_load.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results"
PROMPTS = ("What is the capital of Australia?", "Explain in one sentence why the sky is blue.",
           "Tom has 3 apples and buys 4 more. How many apples does he have?",
           "Name a mammal that can fly.")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random in-test experts (fast dry run)")
    p.add_argument("--pool", help="expert pool YAML (default: packaged experts)")
    p.add_argument("--experts", nargs="*", help="serve only these experts of the pool (saves memory)")
    p.add_argument("--router-checkpoint", help="trained router (storage or checkpoint dir)")
    p.add_argument("--router-encoder", default="minilm", choices=["minilm", "hashing"])
    p.add_argument("--t-max", type=int, default=3)
    p.add_argument("--expert", help="direct-expert target (default: the first expert)")
    p.add_argument("--fusion-members", nargs="*", help="default: the first two experts")
    p.add_argument("--levels", type=int, nargs="*", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=16, help="requests per level (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--targets", nargs="*", default=["router", "fusion", "expert"])
    p.add_argument("--url", help="benchmark a running app instead of deploying one")
    p.add_argument("--name", default="serve_load")
    p.add_argument("--output-dir", default=str(OUT))
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def untrained_router(root: Path, n_experts: int, t_max: int, encoder: str) -> Path:
    """An untrained router module saved as an algorithm checkpoint (decisions cost what trained ones do)."""
    import gymnasium as gym
    import numpy as np
    import torch

    from der_ray.routing.module import RouterRLModule
    from der_ray.routing.policy_io import MODULE_SUBPATH

    torch.manual_seed(0)
    dim = {"hashing": 64, "minilm": 384}[encoder] + n_experts + t_max + 1
    obs = gym.spaces.Dict({"obs": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32),
                           "action_mask": gym.spaces.Box(0.0, 1.0, (n_experts + 1,), np.float32)})
    RouterRLModule(observation_space=obs, action_space=gym.spaces.Discrete(n_experts + 1),
                   model_config={"hidden": [128, 128]}).save_to_path(str(root / MODULE_SUBPATH))
    return root


def serve_config(args: argparse.Namespace, tmp: Path) -> Any:
    from der_ray.config import config_to_dict, load_pool_config
    from der_ray.serve.config import serve_config_from_dict

    if args.tiny:
        from der_ray.config import pool_from_dict
        from der_ray.experts.tiny import build_tiny_expert

        res = {"num_cpus": 0, "timeout_s": 120}
        pool = pool_from_dict({"experts": [
            {"name": "tiny-chat", "source": f"dir:{build_tiny_expert(tmp / 'a', 'byte_bpe', seed=0)}",
             "params_b": 0.001, "prompt": {"format": "chat"}, "resources": res},
            {"name": "tiny-base", "source": f"dir:{build_tiny_expert(tmp / 'b', 'sentencepiece', seed=1)}",
             "params_b": 0.002, "prompt": {"format": "completion"}, "resources": res}]})
        args.router_encoder = "hashing"
    else:
        pool = load_pool_config(args.pool).select(args.experts)
    ckpt = args.router_checkpoint or str(untrained_router(tmp / "router", len(pool.experts), args.t_max,
                                                          args.router_encoder))
    members = args.fusion_members or list(pool.names[:2])
    return serve_config_from_dict({
        "pool": config_to_dict(pool),
        "experts": {"max_ongoing_requests": 16, "max_batch_size": 16, "batch_wait_timeout_s": 0.02},
        "router": {"checkpoint": ckpt, "router": {"encoder": args.router_encoder, "t_max": args.t_max}},
        "fusion": {"members": members, "main": members[0]},
        "limits": {"max_tokens_cap": max(128, args.max_tokens), "request_timeout_s": 1800},
        "http": {"host": "127.0.0.1", "port": _free_port()},
    })


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    import requests

    t0 = time.perf_counter()
    r = requests.post(f"{url}/v1/chat/completions", timeout=1800, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
    latency = time.perf_counter() - t0
    try:
        body = r.json()
    except ValueError:  # not JSON: a proxy error page; keep the text for the report
        body = {"error": r.text[:300]}
    if r.status_code != 200:
        return {"ok": False, "status": r.status_code, "latency_s": latency, "error": body.get("error")}
    meta = body["der_ray"]
    return {"ok": True, "latency_s": latency, "completion_tokens": body["usage"]["completion_tokens"],
            "router_ms": meta.get("timings_ms", {}).get("router"), "route": meta.get("route")}


def run_level(url: str, model: str, concurrency: int, n: int, max_tokens: int) -> dict[str, Any]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        rows = list(ex.map(lambda p: one_request(url, model, p, max_tokens), prompts))
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["ok"]]
    lat = sorted(r["latency_s"] for r in ok)
    out: dict[str, Any] = {
        "model": model, "concurrency": concurrency, "requests": n, "ok": len(ok), "wall_s": round(wall, 3),
        "p50_s": round(statistics.median(lat), 4) if lat else None,
        "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 4) if lat else None,
        "throughput_rps": round(len(ok) / wall, 3),
        "throughput_tok_s": round(sum(r["completion_tokens"] for r in ok) / wall, 2),
        "errors": [r for r in rows if not r["ok"]][:3],
    }
    shares = [r["router_ms"] / 1e3 / r["latency_s"] for r in ok if r.get("router_ms") is not None]
    if shares:
        out["router_overhead_share"] = round(statistics.mean(shares), 4)
        out["mean_hops"] = round(statistics.mean(len(r["route"]) for r in ok), 2)
    return out


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Serve load ({summary['experts']}, max_tokens={summary['max_tokens']})", "",
             f"device: {summary['device']}; load average at start {summary['loadavg']:.1f}", "",
             "setup: " + ", ".join(f"{k}={v}" for k, v in summary["setup"].items()), "",
             "| target | model | conc. | req | ok | p50 s | p99 s | req/s | tok/s | router share |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for target, levels in summary["targets"].items():
        for lv in levels:
            share = lv.get("router_overhead_share")
            cells = [target, lv["model"], lv["concurrency"], lv["requests"], lv["ok"], lv["p50_s"],
                     lv["p99_s"], lv["throughput_rps"], lv["throughput_tok_s"],
                     "" if share is None else f"{100 * share:.2f} %"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| target | throughput c=max / c=1 (req/s) |", "|---|---|"]
    for target, ratio in summary["scaling"].items():
        lines.append(f"| {target} | {ratio} |")
    lines += ["", f"targets: router share <= 5 %: {summary['checks']['router_overhead_ok']}; "
              f"scaling >= 2.5x (direct expert): {summary['checks']['scaling_ok']}", "",
              f"wall time {summary['wall_s']} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from der_ray.evals.report import write_atomic, write_json
    from der_ray.runtime import setup_logging

    setup_logging("WARNING")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, models, setup = args.url.rstrip("/"), None, {"url": args.url}
        else:
            from ray import serve

            from der_ray.serve.launch import deploy

            cfg = serve_config(args, Path(tmp))
            url = deploy(cfg, stack, None)
            stack.callback(serve.shutdown)
            models = list(cfg.load_pool().names)
            setup = {"experts": models, "fusion_members": list(cfg.fusion.members),
                     "router": args.router_checkpoint or f"untrained ({args.router_encoder} encoder)",
                     "t_max": args.t_max, "expert_replicas": cfg.experts.num_replicas,
                     "max_batch_size": cfg.experts.max_batch_size, "fusion_decoders": cfg.fusion.decoders}
        expert = args.expert or (models[0] if models else "smollm2-135m")
        names = {"router": "der-router", "fusion": "deepen-fusion", "expert": expert}
        for target in args.targets:  # warm-up: decoder builds, first batches, encoder load
            one_request(url, names[target], PROMPTS[0], 2)
        results: dict[str, list[dict[str, Any]]] = {}
        for target in args.targets:
            for c in args.levels:
                lv = run_level(url, names[target], c, max(c, args.requests), args.max_tokens)
                results.setdefault(target, []).append(lv)
                print(json.dumps({k: v for k, v in lv.items() if k != "errors"}), flush=True)
    scaling = {t: round(lv[-1]["throughput_rps"] / lv[0]["throughput_rps"], 2)
               for t, lv in results.items() if lv and lv[0]["throughput_rps"]}
    shares = [lv["router_overhead_share"] for lv in results.get("router", [])
              if "router_overhead_share" in lv]
    summary = {
        "experts": "tiny" if args.tiny else "default", "setup": setup, "max_tokens": args.max_tokens,
        "levels": args.levels,
        "device": _device(), "loadavg": load0, "targets": results, "scaling": scaling,
        "checks": {"router_overhead_ok": bool(shares) and max(shares) <= 0.05,
                   "scaling_ok": scaling.get("expert", 0) >= 2.5},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.output_dir)
    write_json(out / f"{args.name}.json", summary)
    write_atomic(out / f"{args.name}.md", markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
