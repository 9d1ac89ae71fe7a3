"""Benchmark of the expert pool: cold prepare, warm load, decode speed, prefill, memory and accuracy.

Per expert, each in its own fresh subprocess (so peak RSS is that expert's alone and no two experts
share memory or warmed-up kernels):

- cold prepare: ``assets.prepare`` into a fresh temporary cache (assemble GGUF + convert), then deleted;
  run in a separate subprocess so the conversion's memory does not count as the expert's peak RSS;
- warm load: ``HFExpert`` construction from the already-prepared default cache (tokenizer + model);
- decode tok/s at batch 1 and batch 8 (greedy, ``ignore_eos=True``, 32 forced new tokens, one warm-up
  call, best and median of ``--repeats``) and the time to first token of a ~256-token prompt;
- accuracy on a fixed seeded slice of the multi-domain mix, planned by ``der_ray.evals.answering``
  (multiple choice by option likelihood, GSM8K with a bounded chain of thought), batch 8.

The driver compares the experts side by side, checks the targets, and writes
``<output-dir>/experts.json`` and ``experts.md`` atomically. How to run::

    .venv/bin/python benchmarks/experts.py                         # everything, about 40 min on 2 cores
    .venv/bin/python benchmarks/experts.py --skip-cold --skip-accuracy          # speed only, ~3 min
    .venv/bin/python benchmarks/experts.py --experts smollm2-135m --per-domain 5 --domains gsm8k piqa

Imports: der_ray (config, assets, experts.hf, evals, data); torch/transformers only in the children.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_DOMAINS = ("gsm8k", "arc_challenge", "mmlu", "triviaqa", "nq_open", "piqa")
#: The same raw text for every expert (no chat template, so every model decodes from the same words).
SPEED_PROMPT = "The history of the city of Paris begins"
PREFILL_TOKENS = 256
NEW_TOKENS = 32
#: Targets: all three warm loads together, and how much batching must buy the smallest expert.
TARGET_TOTAL_LOAD_S = 20.0
TARGET_SMOL_B8_RATIO = 3.0
SMOL = "smollm2-135m"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", nargs="*", help="expert names (default: the whole default pool)")
    p.add_argument("--per-domain", type=int, default=50, help="questions per domain (same slice for all)")
    p.add_argument("--domains", nargs="*", default=list(DEFAULT_DOMAINS))
    p.add_argument("--seed", type=int, default=0, help="seed of the multi-domain slice")
    p.add_argument("--numeric-max-tokens", type=int, default=192,
                   help="GSM8K chain-of-thought budget (192 keeps the full run near 40 min on 2 cores)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of the accuracy requests")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every expert")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per speed measurement")
    p.add_argument("--skip-cold", action="store_true", help="skip the cold prepare (saves ~3 min)")
    p.add_argument("--skip-accuracy", action="store_true", help="speed and memory only")
    p.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    # Internal: a child process measures one expert and writes its JSON to --result.
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=["cold", "warm"], default="warm", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------------ children


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _expert_config(name: str, threads: int) -> Any:
    from der_ray.config import load_pool_config

    cfg = load_pool_config().expert(name)
    # The default pool asks for 0.5 CPU per actor (1 thread); the benchmark pins the same count for all.
    return dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, torch_threads=threads))


def cold_prepare(name: str, threads: int) -> dict[str, Any]:
    """Prepare ``name``'s asset into a fresh temporary cache and delete it; report the seconds."""
    import torch

    from der_ray.assets import prepare, verify_prepared
    from der_ray.config import split_source

    torch.set_num_threads(threads)
    kind, asset = split_source(_expert_config(name, threads).source)
    if kind != "asset":
        return {"skipped": f"source kind {kind!r} has no prepare step"}
    tmp = tempfile.mkdtemp(prefix=f"der_ray_cold_{name}_")
    try:
        t0 = time.perf_counter()
        model_dir = prepare(asset, tmp, progress=False)
        total = time.perf_counter() - t0
        convert = float(verify_prepared(model_dir)["conversion"].get("seconds", float("nan")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Assembly (copy + sha256 of the GGUF parts) is whatever the conversion did not take.
    return {"prepare_s": round(total, 2), "convert_s": convert, "assemble_s": round(total - convert, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _timed(expert: Any, prompts: list[str], n_new: int, repeats: int) -> dict[str, Any]:
    """Warm up once, then time ``repeats`` forced-length greedy calls; tok/s counts generated tokens."""
    expert.generate(prompts, n_new, 0.0, apply_format=False, ignore_eos=True)
    rates, tokens = [], []
    for _ in range(repeats):
        gens = expert.generate(prompts, n_new, 0.0, apply_format=False, ignore_eos=True)
        n = sum(g.completion_tokens for g in gens)
        tokens.append(min(g.completion_tokens for g in gens))
        rates.append(n / gens[0].latency_s)
    return {"best_tok_s": round(max(rates), 2), "median_tok_s": round(statistics.median(rates), 2),
            "runs_tok_s": [round(r, 2) for r in rates], "min_row_tokens": min(tokens),
            "prompt_tokens": gens[0].prompt_tokens}


def _prefill(expert: Any, repeats: int) -> dict[str, Any]:
    """Time to first token of a ~``PREFILL_TOKENS``-token prompt (one new token = prefill + 1 argmax)."""
    tok = expert.tokenizer
    ids = tok.encode(" ".join([SPEED_PROMPT + " and continues."] * 64), add_special_tokens=False)
    prompt = tok.decode(ids[:PREFILL_TOKENS - 1])  # the BOS token, if any, makes it ~256
    expert.generate([prompt], 1, 0.0, apply_format=False, ignore_eos=True)
    times = []
    for _ in range(repeats):
        gen = expert.generate([prompt], 1, 0.0, apply_format=False, ignore_eos=True)[0]
        times.append(gen.latency_s)
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
            "prompt_tokens": gen.prompt_tokens}


def _accuracy(expert: Any, args: argparse.Namespace) -> dict[str, Any]:
    from der_ray import data
    from der_ray.evals.answering import collect, plan, run_local

    examples = list(data.iter_examples(data.multi_domain_mix(args.domains, args.per_domain, args.seed)))
    requests = plan(examples, expert.cfg.prompt.format, batch_size=args.batch_size,
                    max_new_tokens={"numeric": args.numeric_max_tokens})
    results, seconds = [], Counter[str]()
    cut_at_budget = Counter[str]()  # generated answers that ran into max_new_tokens, per domain
    t0 = time.perf_counter()
    for k, req in enumerate(requests):
        t = time.perf_counter()
        (res,) = run_local(expert, [req])
        kind = "cloze" if req.method == "score_options" else examples[req.indices[0]].answer_type
        seconds[kind] += time.perf_counter() - t
        if req.method == "generate":
            for i, g in zip(req.indices, res, strict=True):
                cut_at_budget[examples[i].domain] += g.finish_reason == "length"
        results.append(res)
        print(f"[{expert.name}] request {k + 1}/{len(requests)} {kind} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    answers = collect(expert.name, examples, requests, results)
    return {"answers": [dataclasses.asdict(a) for a in answers], "n_questions": len(examples),
            "seconds": round(time.perf_counter() - t0, 1),
            "seconds_by_kind": {k: round(v, 1) for k, v in seconds.items()},
            "cut_at_budget": dict(cut_at_budget)}


def measure_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm load, speed, prefill, accuracy and memory of one expert, in this (fresh) process."""
    t0 = time.perf_counter()
    import torch  # noqa: F401  (timed: every process pays this before it can load anything)
    import transformers  # noqa: F401

    from der_ray.experts.hf import HFExpert

    import_s = time.perf_counter() - t0
    cfg = _expert_config(name, args.threads)
    load_avg_start = os.getloadavg()
    t0 = time.perf_counter()
    expert = HFExpert(cfg)
    out: dict[str, Any] = {
        "import_s": round(import_s, 2), "construct_s": round(time.perf_counter() - t0, 2),
        "load_s": round(expert.load_s, 2), "rss_after_load_mb": round(_rss_mb(), 1),
        "n_params": sum(p.numel() for p in expert.model.parameters()), "vocab": len(expert.tokenizer),
        "torch_threads": torch.get_num_threads(), "model_dir": expert.model_dir,
    }
    print(f"[{name}] loaded in {expert.load_s:.1f} s; timing decode", file=sys.stderr, flush=True)
    out["b1"] = _timed(expert, [SPEED_PROMPT], NEW_TOKENS, args.repeats)
    out["b8"] = _timed(expert, [SPEED_PROMPT] * 8, NEW_TOKENS, args.repeats)
    out["b8_over_b1"] = round(out["b8"]["best_tok_s"] / out["b1"]["best_tok_s"], 2)
    out["prefill"] = _prefill(expert, args.repeats)
    out["peak_rss_speed_mb"] = round(_peak_rss_mb(), 1)
    if not args.skip_accuracy:
        out["accuracy"] = _accuracy(expert, args)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out["load_avg_start"], out["load_avg_end"] = load_avg_start, os.getloadavg()
    return out


# ------------------------------------------------------------------------------------------ driver


def _run_child(name: str, phase: str, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Re-invoke this script for one expert and phase; the child writes its JSON to a temp file."""
    fd, path = tempfile.mkstemp(prefix=f"der_ray_bench_{name}_{phase}_", suffix=".json")
    os.close(fd)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", name, "--phase", phase,
           "--result", path]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0:
            return {"error": f"child exited with code {proc.returncode}"}
        result: dict[str, Any] = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def _child_flags(args: argparse.Namespace) -> list[str]:
    """The flags a child needs to measure exactly what the driver was asked for."""
    flags = ["--per-domain", str(args.per_domain), "--domains", *args.domains, "--seed", str(args.seed),
             "--numeric-max-tokens", str(args.numeric_max_tokens), "--batch-size", str(args.batch_size),
             "--threads", str(args.threads), "--repeats", str(args.repeats)]
    return flags + (["--skip-accuracy"] if args.skip_accuracy else [])


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_kb / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": metadata.version("torch"), "transformers": metadata.version("transformers"),
            "OMP_NUM_THREADS(parent)": os.environ.get("OMP_NUM_THREADS")}


def _targets(experts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from der_ray.config import load_pool_config

    loads = {n: r["load_s"] for n, r in experts.items() if "load_s" in r}
    rows = [{"target": f"warm load of all experts <= {TARGET_TOTAL_LOAD_S:.0f} s (tokenizer + model)",
             "value": round(sum(loads.values()), 2), "pass": sum(loads.values()) <= TARGET_TOTAL_LOAD_S,
             "complete": set(loads) >= set(load_pool_config().names)}]
    if SMOL in experts and "b8_over_b1" in experts[SMOL]:
        ratio = experts[SMOL]["b8_over_b1"]
        rows.append({"target": f"{SMOL} batch-8 tok/s >= {TARGET_SMOL_B8_RATIO:.0f}x batch-1", "value": ratio,
                     "pass": ratio >= TARGET_SMOL_B8_RATIO, "complete": True})
    return rows


def _speed_table(experts: dict[str, dict[str, Any]], cold: dict[str, dict[str, Any]]) -> str:
    head = ["expert", "cold prepare s (assemble + convert)", "warm load s (construct)", "b1 tok/s best (med)",
            "b8 tok/s best (med)", "b8/b1", "prefill 256 tok s", "peak RSS MB (after load)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in experts.items():
        if "error" in r:
            lines.append(f"| {name} | " + " | ".join(["error"] * (len(head) - 1)) + " |")
            continue
        c = cold.get(name, {})
        cold_cell = (f"{c['prepare_s']:.1f} ({c['assemble_s']:.1f} + {c['convert_s']:.1f})"
                     if "prepare_s" in c else c.get("error", "skipped"))
        lines.append("| " + " | ".join([
            name, cold_cell, f"{r['load_s']:.2f} ({r['construct_s']:.2f})",
            f"{r['b1']['best_tok_s']:.1f} ({r['b1']['median_tok_s']:.1f})",
            f"{r['b8']['best_tok_s']:.1f} ({r['b8']['median_tok_s']:.1f})", f"{r['b8_over_b1']:.2f}x",
            f"{r['prefill']['best_s']:.2f} ({r['prefill']['prompt_tokens']} tok)",
            f"{r['peak_rss_mb']:.0f} ({r['rss_after_load_mb']:.0f})"]) + " |")
    ok = [r for r in experts.values() if "load_s" in r]
    total_cold = sum(c.get("prepare_s", 0.0) for c in cold.values())
    lines.append(f"| **total** | {total_cold:.1f} | {sum(r['load_s'] for r in ok):.2f} | | | | | |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    from der_ray.evals.report import markdown_table

    m, cfg = report["machine"], report["config"]
    parts = [
        "# Expert benchmark", "",
        f"{report['date']} · {m['cpu']} · {m['cores']} cores · {m['mem_gib']} GiB · "
        f"torch {m['torch']} · transformers {m['transformers']} · Python {m['python']}", "",
        f"Load average (1/5/15 min) before: {report['load_avg_before']}, after: {report['load_avg_after']}"
        f" (2 shared cores: other work may have run at the same time). Wall time: {report['wall_s']} s.", "",
        f"Config: experts {cfg['experts']}, torch threads {cfg['threads']}, {NEW_TOKENS} forced new tokens,"
        f" greedy, warm-up + {cfg['repeats']} repeats, prompt {SPEED_PROMPT!r} (raw text, no template);"
        f" accuracy: {cfg['per_domain']} per domain, seed {cfg['seed']}, batch {cfg['batch_size']},"
        f" multiple choice by option likelihood, GSM8K chain of thought <= {cfg['numeric_max_tokens']}"
        " tokens.", "",
        "## Speed and memory", "", _speed_table(report["experts"], report["cold"]), "",
        "Cold prepare: a fresh temporary cache (GGUF assembly + sha256, then GGUF → fp16 safetensors). "
        "Warm load: tokenizer + model from the prepared default cache (files probably in the page cache);"
        " construct adds source resolution and the prompt formatter. Peak RSS is the whole child process"
        " (load, speed runs and accuracy).", "",
        "## Targets", "", "| target | value | result |", "|---|---|---|",
        *[f"| {t['target']} | {t['value']} | {'PASS' if t['pass'] else 'FAIL'}"
          f"{'' if t['complete'] else ' (not all experts measured)'} |" for t in report["targets"]], "",
    ]
    if report.get("accuracy"):
        acc = report["accuracy"]
        parts += ["## Accuracy (score, n)", "", markdown_table(acc), "",
                  "| expert | accuracy wall s | s by kind | GSM8K/QA answers cut at the token budget |",
                  "|---|---|---|---|"]
        for name, r in report["experts"].items():
            a = r.get("accuracy_meta")
            if a:
                parts.append(f"| {name} | {a['seconds']} | {a['seconds_by_kind']} | {a['cut_at_budget']} |")
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    if args.one:  # child mode
        result = (cold_prepare(args.one, args.threads) if args.phase == "cold"
                  else measure_one(args.one, args))
        from der_ray.evals.report import write_json

        write_json(Path(args.result), result)
        return 0

    from der_ray.config import load_pool_config
    from der_ray.evals.answering import Answer
    from der_ray.evals.report import summarize, write_atomic, write_json

    names = list(load_pool_config().select(args.experts).names)  # unknown names fail here, listed
    passthrough = _child_flags(args)
    started, t0 = datetime.now(UTC), time.perf_counter()
    load_before = os.getloadavg()
    cold: dict[str, dict[str, Any]] = {}
    experts: dict[str, dict[str, Any]] = {}
    for name in names:
        if not args.skip_cold:
            print(f"== {name}: cold prepare", file=sys.stderr, flush=True)
            cold[name] = _run_child(name, "cold", args, passthrough)
        print(f"== {name}: warm load, speed, accuracy", file=sys.stderr, flush=True)
        experts[name] = _run_child(name, "warm", args, passthrough)
    answers = []
    for r in experts.values():
        if "accuracy" in r:
            acc = r.pop("accuracy")
            answers += [Answer(**a) for a in acc.pop("answers")]
            r["accuracy_meta"] = acc
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "wall_s": round(time.perf_counter() - t0, 1),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info(),
        "config": {**{k: v for k, v in vars(args).items() if k not in ("one", "phase", "result")},
                   "experts": names, "new_tokens": NEW_TOKENS, "speed_prompt": SPEED_PROMPT,
                   "prefill_tokens": PREFILL_TOKENS,
                   "expert_configs": {n: dataclasses.asdict(_expert_config(n, args.threads)) for n in names}},
        "cold": cold, "experts": experts, "targets": _targets(experts),
        "accuracy": summarize(answers) if answers else None,
        "answers": [dataclasses.asdict(a) for a in answers],  # per question, to compare across commits
    }
    out = Path(args.output_dir).expanduser().resolve()
    write_json(out / "experts.json", report)
    write_atomic(out / "experts.md", render_markdown(report) + "\n")
    print(render_markdown(report))
    failed = [n for n, r in {**cold, **experts}.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
