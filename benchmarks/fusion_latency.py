"""Per-token latency and peak memory of DeePEn fused decoding vs its members decoding alone.

    .venv/bin/python benchmarks/fusion_latency.py                       # SmolLM2 + Qwen, in-process
    .venv/bin/python benchmarks/fusion_latency.py --actors              # members as expert actors
    .venv/bin/python benchmarks/fusion_latency.py --members smollm2-135m gemma3-270m qwen2.5-coder-0.5b

One run measures, on the same prompts and greedy decoding (``--tokens`` new tokens, no stop strings):
- latency: each member alone (``SoloDecoder``: the member's own KV-cache session, the step path fusion
  uses) and the fusion of all members (``FusionDecoder``) with each feeding schedule
  (``FusionConfig.feed``: ``parallel``, the default, and ``lazy``), in the same process after a
  warm-up (one untimed pass over the prompts, so both schedules find the relative-row cache warm);
  ms/token = total generate time (prefill included) / tokens emitted. ``--rounds`` rounds each time
  every system in turn (load on a shared machine drifts within minutes); the ratio fused (default
  schedule) / slowest member is taken per round and its median reported.
- memory: peak RSS (``VmHWM``) of the fused setup (this process; with ``--actors`` also every actor
  process) vs the sum of each member's peak RSS alone, each measured in its own fresh subprocess that
  loads the member and runs the same prompts. RSS counts a shared page once per process that maps it
  (Ray's object-store pages, shared libraries), so the peak of the summed PSS (proportional set size,
  each shared page split between its processes; sampled every 0.1 s from after the models are
  loaded until the end of decoding) is reported too: that is the memory the machine actually gives
  the setup while it decodes.
Targets (issue 5): latency ratio <= 1.3, memory ratio <= 1.2. Writes results/fusion_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROMPTS = ("What is the capital of Australia?",
           "Explain in one sentence why the sky is blue.",
           "Write a Python function that returns the square of a number.")
DEFAULT_MEMBERS = ["smollm2-135m", "qwen2.5-coder-0.5b"]
OUT = Path(__file__).resolve().parent / "results"


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size of a process in MB (Linux ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def status_mb(field: str, pid: int | str = "self") -> float:
    """A ``/proc/<pid>/status`` memory field (e.g. ``RssShmem``) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def pss_mb(pid: int) -> float:
    """Proportional set size of a process in MB (``/proc/<pid>/smaps_rollup``)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for pid {pid}")


class PeakPss:
    """Samples the summed PSS of some processes in a background thread and keeps the peak."""

    def __init__(self, pids: list[int], period_s: float = 0.1) -> None:
        self.pids, self.period_s, self.peak_mb = pids, period_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, sum(pss_mb(p) for p in self.pids))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several ``_timed`` results of one decoder as one."""
    out = {k: sum(p[k] for p in parts) for k in ("tokens", "seconds", "changed_tokens", "searched_steps")}
    return {**out, "ms_per_token": 1000 * out["seconds"] / max(out["tokens"], 1)}


def _timed(decoder: Any, prompts: list[str], tokens: int) -> dict[str, Any]:
    lat, n, changed, searched = 0.0, 0, 0, 0
    for p in prompts:
        r = decoder.generate(p, max_new_tokens=tokens)
        lat, n, changed = lat + r.latency_s, n + len(r.token_ids), changed + r.n_changed
        searched += r.n_searched
    return {"ms_per_token": 1000 * lat / max(n, 1), "tokens": n, "seconds": lat, "changed_tokens": changed,
            "searched_steps": searched}


def child(name: str, prompts: list[str], tokens: int, threads: int) -> None:
    """Subprocess body: one member alone; prints its numbers as one JSON line."""
    from der_ray.config import load_pool_config
    from der_ray.evals.fusion_eval import SoloDecoder
    from der_ray.experts.hf import HFExpert
    from der_ray.runtime import set_threads

    set_threads(threads)
    expert = HFExpert(load_pool_config().expert(name))
    with PeakPss([os.getpid()]) as pss:  # from after loading, as in the fused setup
        solo = SoloDecoder(expert, name=name)
        solo.generate(prompts[0], max_new_tokens=4)  # warm-up
        res = _timed(solo, prompts, tokens)
    print(json.dumps({**res, "name": name, "peak_rss_mb": vm_hwm_mb(), "peak_pss_mb": pss.peak_mb}))


def _alone_in_subprocess(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--tokens", str(args.tokens), "--prompts",
           str(args.prompts), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", nargs="*", default=DEFAULT_MEMBERS)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of every system in turn")
    p.add_argument("--threads", type=int, default=2, help="torch threads of this process and children")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--main", help="the main member (default: the first of --members)")
    p.add_argument("--anchor-dtype", choices=["float32", "float16"],
                   help="FusionConfig.anchor_dtype (default: the config's, float16)")
    p.add_argument("--actors", action="store_true", help="members as expert actors (parallel steps)")
    p.add_argument("--output-dir", default=str(OUT))
    p.add_argument("--name", default="fusion_latency")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    prompts = list(PROMPTS[: args.prompts])
    if args.child:
        child(args.child, prompts, args.tokens, args.threads)
        return 0

    from der_ray.config import load_pool_config
    from der_ray.evals.fusion_eval import SoloDecoder
    from der_ray.evals.report import write_atomic, write_json
    from der_ray.fusion.decoder import FusionConfig, FusionDecoder
    from der_ray.paths import cache_dir
    from der_ray.runtime import init_ray, set_threads

    t_start, load0 = time.perf_counter(), os.getloadavg()
    alone_sub = {n: _alone_in_subprocess(n, args) for n in args.members}  # fresh process each
    set_threads(args.threads)
    pool = load_pool_config().select(args.members)
    actor_pids: dict[str, int] = {}
    objs: dict[str, Any]
    if args.actors:
        import ray

        from der_ray.experts.actors import ExpertPool

        started = init_ray()
        experts = ExpertPool(pool)
        experts.start()
        objs = {n: experts[n] for n in args.members}
        actor_pids = {n: objs[n].health().pid for n in args.members}
    else:
        from der_ray.experts.hf import HFExpert

        objs = {n: HFExpert(pool.expert(n)) for n in args.members}
    try:
        with PeakPss([os.getpid(), *actor_pids.values()]) as pss:
            solo = {n: SoloDecoder(objs[n], name=n, top_k=args.top_k) for n in args.members}
            main_name = args.main or args.members[0]
            cfg = FusionConfig(top_k=args.top_k, anchor_dir=str(cache_dir() / "anchors"))
            if args.anchor_dtype:
                cfg = dataclasses.replace(cfg, anchor_dtype=args.anchor_dtype)
            t0 = time.perf_counter()
            fusion = FusionDecoder([objs[n] for n in args.members], main=main_name, config=cfg,
                                   names=args.members)
            setup_s = time.perf_counter() - t0
            for d in solo.values():
                d.generate(prompts[0], max_new_tokens=4)  # warm-up
            for prompt in prompts:  # warm-up that also fills the relative-row cache
                fusion.generate(prompt, max_new_tokens=args.tokens)
            decoders: dict[str, Any] = {f"alone:{n}": d for n, d in solo.items()}
            for feed in ("parallel", "lazy"):  # same members, anchors and row caches
                decoders[f"fused:{feed}"] = fusion.with_config(feed=feed)
            # Rounds of every system in turn: load on the shared machine drifts, so each round's
            # ratio compares measurements minutes apart at most, and the median of the rounds is reported.
            rounds = [{k: _timed(d, prompts, args.tokens) for k, d in decoders.items()}
                      for _ in range(args.rounds)]
            alone = {n: _merge([r[f"alone:{n}"] for r in rounds]) for n in args.members}
            schedules = {feed: _merge([r[f"fused:{feed}"] for r in rounds]) for feed in ("parallel", "lazy")}
            slowest = max(alone, key=lambda n: alone[n]["ms_per_token"])
            by_round = {feed: [r[f"fused:{feed}"]["ms_per_token"] / r[f"alone:{slowest}"]["ms_per_token"]
                               for r in rounds] for feed in schedules}
            fused = {**schedules[cfg.feed], "feed": cfg.feed, "setup_s": setup_s,
                     "anchors": len(fusion.anchors.ids[0]), "main": main_name}
            rss = {"driver": vm_hwm_mb(), **{f"actor:{n}": vm_hwm_mb(pid) for n, pid in actor_pids.items()}}
            shared = {"driver": status_mb("RssShmem")}  # object-store pages, also in the actors' RSS
    finally:
        if args.actors:
            experts.shutdown()
            if started:
                ray.shutdown()
    fused_rss, sum_alone = sum(rss.values()), sum(a["peak_rss_mb"] for a in alone_sub.values())
    sum_pss = sum(a["peak_pss_mb"] for a in alone_sub.values())
    summary = {
        "members": args.members, "mode": "actors" if args.actors else "local", "tokens": args.tokens,
        "prompts": prompts, "threads": args.threads, "top_k": args.top_k, "anchor_dtype": cfg.anchor_dtype,
        "alone": alone, "alone_subprocess": alone_sub, "fused": fused, "fused_by_feed": schedules,
        "slowest_member": slowest, "rounds": args.rounds,
        "latency_ratio": statistics.median(by_round[fused["feed"]]),
        "latency_ratio_by_feed": {k: statistics.median(v) for k, v in by_round.items()},
        "latency_ratio_rounds": by_round,
        "peak_rss_mb": rss, "shared_rss_mb_at_end": shared, "fused_peak_rss_mb": fused_rss,
        "sum_alone_peak_rss_mb": sum_alone,
        "memory_ratio": fused_rss / sum_alone, "targets": {"latency_ratio": 1.3, "memory_ratio": 1.2},
        "fused_peak_pss_mb": pss.peak_mb, "sum_alone_peak_pss_mb": sum_pss,
        "memory_ratio_pss": pss.peak_mb / sum_pss,
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.output_dir)
    write_json(out / f"{args.name}.json", summary)
    md = _markdown(summary)
    write_atomic(out / f"{args.name}.md", md)
    print(md)
    return 0


def _markdown(s: dict[str, Any]) -> str:
    ok = {k: "meets" if s[k] <= s["targets"][k] else "MISSES" for k in ("latency_ratio", "memory_ratio")}
    lines = [f"# DeePEn fusion latency and memory ({', '.join(s['members'])}; {s['mode']})", "",
             f"{len(s['prompts'])} prompts x up to {s['tokens']} greedy tokens, top-k {s['top_k']}, "
             f"{s['threads']} torch threads, main member {s['fused']['main']}, "
             f"{s['fused']['anchors']} anchors in {s.get('anchor_dtype', 'float32')} "
             f"(decoder setup {s['fused']['setup_s']:.1f} s, not in ms/token); {s['rounds']} rounds, "
             "each timing every system in turn.", "",
             "| decoding | ms/token, all rounds | vs slowest alone, median of rounds (each round) | tokens "
             "| searched steps | changed tokens |",
             "|---|---|---|---|---|---|"]
    for n, a in s["alone"].items():
        lines.append(f"| {n} alone | {a['ms_per_token']:.1f} | "
                     f"{'1.00x' if n == s['slowest_member'] else '-'} | {a['tokens']} | - | - |")
    for feed, f in s["fused_by_feed"].items():
        default = " (default)" if feed == s["fused"]["feed"] else ""
        each = ", ".join(f"{r:.2f}" for r in s["latency_ratio_rounds"][feed])
        lines.append(f"| fused, {feed} feeding{default} | {f['ms_per_token']:.1f} | "
                     f"{s['latency_ratio_by_feed'][feed]:.2f}x ({each}) | {f['tokens']} | "
                     f"{f['searched_steps']} | {f['changed_tokens']} |")
    lines += ["", f"**Latency ratio** fused ({s['fused']['feed']} feeding) / slowest member alone "
              f"({s['slowest_member']}), median of rounds: **{s['latency_ratio']:.2f}x** "
              f"(target <= 1.3x: {ok['latency_ratio']}).",
              "",
              "| peak RSS (MB) | value |", "|---|---|"]
    lines += [f"| {n} alone (own process) | {a['peak_rss_mb']:.0f} |"
              for n, a in s["alone_subprocess"].items()]
    lines += [f"| sum of members alone | {s['sum_alone_peak_rss_mb']:.0f} |"]
    lines += [f"| fused setup: {k} | {v:.0f} |" for k, v in s["peak_rss_mb"].items()]
    lines += [f"| fused setup total | {s['fused_peak_rss_mb']:.0f} |"]
    if s["mode"] == "actors":
        lines.append(f"| of which the driver's object-store pages (shared with the actors, counted twice) | "
                     f"{s['shared_rss_mb_at_end']['driver']:.0f} |")
    pss_ok = "meets" if s["memory_ratio_pss"] <= s["targets"]["memory_ratio"] else "MISSES"
    lines += ["",
              f"**Memory ratio** fused / sum of members, peak RSS: **{s['memory_ratio']:.2f}x** "
              f"(target <= 1.2x: {ok['memory_ratio']}).", "",
              "| peak PSS while decoding (MB; shared pages counted once) | value |", "|---|---|"]
    lines += [f"| {n} alone (own process) | {a['peak_pss_mb']:.0f} |"
              for n, a in s["alone_subprocess"].items()]
    lines += [f"| sum of members alone | {s['sum_alone_peak_pss_mb']:.0f} |",
              f"| fused setup, all its processes | {s['fused_peak_pss_mb']:.0f} |", "",
              f"**Memory ratio** fused / sum of members, peak PSS: **{s['memory_ratio_pss']:.2f}x** "
              f"(target <= 1.2x: {pss_ok}).", "",
              f"Load average {s['loadavg_before'][0]:.2f} -> {s['loadavg_after'][0]:.2f} "
              f"on {s['cpu_count']} cores; wall time {s['wall_s']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
