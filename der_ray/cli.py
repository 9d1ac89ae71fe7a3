"""The ``der-ray`` command line: a thin argparse front end over library functions.

Contract: ``main(argv) -> int`` parses, runs one subcommand and returns its exit status. It is the
one place where ``DerRayError``s become process exit codes: each error class carries ``exit_code``
(2 config, 3 asset, 4 expert, 1 other), and the CLI prints ``error: <message>`` to stderr with no
traceback. Anything else is a bug and keeps its traceback. Nothing runs at import.

Adding a subcommand: write ``_add_<name>(subparsers)`` that builds its parser and sets
``func=<handler>`` (a ``(argparse.Namespace) -> int``), and append it to ``_SUBCOMMANDS``.

Imports: stdlib, ``der_ray.errors`` and the light ``der_ray.assets`` (no torch until a conversion runs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from der_ray import __version__
from der_ray.errors import ConfigError, DerRayError

# --------------------------------------------------------------------------- prepare


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "prepare",
        help="assemble, verify and convert model assets into the cache (once)",
        description="Build the fp16 Hugging Face directory of each named asset; instant when done before.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="asset names (see `der-ray assets`)")
    p.add_argument("--all", action="store_true", help="prepare every registered asset")
    p.add_argument(
        "--cache-dir", default=None, help="cache root (default: $DER_RAY_CACHE or ~/.cache/der_ray)"
    )
    p.add_argument("--force", action="store_true", help="re-assemble and re-convert even if prepared")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from der_ray.assets import asset_names, get_spec, prepare

    if args.all and args.names:
        raise ConfigError("give asset names or --all, not both")
    names: list[str] = asset_names() if args.all else list(dict.fromkeys(args.names))
    if not names:
        raise ConfigError(
            f"name at least one asset or pass --all; valid asset names: {', '.join(asset_names())}"
        )
    for name in names:  # fail on a typo before spending minutes on the names before it
        get_spec(name)
    for name in names:
        path = prepare(name, args.cache_dir, progress=not args.no_progress, force=args.force)
        print(f"{name}\t{path}", flush=True)
    return 0


# --------------------------------------------------------------------------- assets


def _add_assets(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "assets",
        help="list model assets and whether they are installed and prepared",
        description="List registered model assets and their state (no hashing, no conversion).",
    )
    p.add_argument(
        "--cache-dir", default=None, help="cache root (default: $DER_RAY_CACHE or ~/.cache/der_ray)"
    )
    p.set_defaults(func=_cmd_assets)


def _cmd_assets(args: argparse.Namespace) -> int:
    from der_ray.assets import asset_status

    rows = [("NAME", "FAMILY", "PARAMS", "CHAT", "INSTALLED", "GGUF", "PREPARED")]
    hints: list[str] = []
    for st in asset_status(args.cache_dir):
        spec = st.spec
        rows.append(
            (
                spec.name,
                spec.family,
                f"{spec.n_params / 1e6:.1f}M",
                "yes" if spec.has_chat_template else "no",
                "yes" if st.installed else "no",
                "yes" if st.gguf_present else "no",
                str(st.prepared) if st.prepared else "-",
            )
        )
        if not st.installed:
            hints.append(f"  {spec.name}: {spec.install_command}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if hints:
        print("\nnot installed; install with:\n" + "\n".join(hints))
    return 0


# --------------------------------------------------------------------------- check-cluster


def _add_check_cluster(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "check-cluster",
        help="validate Ray cluster launcher YAML files offline",
        description="Check cluster configs against Ray's launcher schema and config validation "
        "(no credentials, no network). Exit 2 names the offending key.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="e.g. cluster.yaml cluster.local.yaml")
    p.set_defaults(func=_cmd_check_cluster)


def _cmd_check_cluster(args: argparse.Namespace) -> int:
    from der_ray.cluster import validate_cluster_config

    for path in args.files:
        try:
            prepared = validate_cluster_config(path)
        except ConfigError as e:  # name the file here: the error itself names the key
            raise ConfigError(f"{path}: {e}") from None
        types = ", ".join(f"{n} {t.get('resources') or '(detected)'}"
                          for n, t in prepared["available_node_types"].items())
        print(f"{path}: ok (provider {prepared['provider']['type']}; head {prepared['head_node_type']}; "
              f"node types: {types})")
    return 0


# --------------------------------------------------------------------------- submit


def _add_submit(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "submit",
        help="submit a job to a running Ray cluster with der_ray's working-dir excludes",
        description="`ray job submit` with the runtime_env of der_ray.jobs_submit; waits and exits 0 "
        "only if the job SUCCEEDED. Example: der-ray submit -- python jobs/main.py --output-dir /abs/out",
    )
    p.add_argument("--address", help="job server URL (default $RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's cwd (default: .)")
    p.add_argument("--submission-id", help="job id (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("--print-runtime-env", action="store_true",
                   help="only print the runtime_env JSON (for `ray job submit --runtime-env-json`)")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the command, e.g. python jobs/x.py")
    p.set_defaults(func=_cmd_submit)


def _cmd_submit(args: argparse.Namespace) -> int:
    import json

    from der_ray.jobs_submit import submission_runtime_env, submit_job

    if args.print_runtime_env:
        print(json.dumps(submission_runtime_env(args.working_dir)))
        return 0
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint:
        raise ConfigError("give the job's command after --, e.g. der-ray submit -- python jobs/main.py")
    job_id, status = submit_job(entrypoint, address=args.address, working_dir=args.working_dir,
                                submission_id=args.submission_id, wait=not args.no_wait,
                                log=lambda text: print(text, end="", flush=True))
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if args.no_wait or status == "SUCCEEDED" else 1


# --------------------------------------------------------------------------- serve


def _add_serve(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from der_ray.serve.launch import add_arguments

    p = subparsers.add_parser(
        "serve",
        help="serve the routing and fusion graphs behind an OpenAI-compatible HTTP API (Ray Serve)",
        description="Deploy der_ray on Ray Serve: /v1/chat/completions, /v1/completions, /v1/models, "
        "/healthz on 127.0.0.1:8000 unless configured. Runs until interrupted (or --detach).",
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import contextlib

    from der_ray.serve.launch import run

    with contextlib.ExitStack() as stack:
        return run(args, stack)


# --------------------------------------------------------------------------- entry point

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (  # type: ignore[type-arg]
    _add_prepare,
    _add_assets,
    _add_check_cluster,
    _add_submit,
    _add_serve,
)


def make_parser() -> argparse.ArgumentParser:
    """The ``der-ray`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="der-ray", description="Ensembles of small LLM experts on Ray.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``der-ray`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DerRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
