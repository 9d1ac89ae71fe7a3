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


# --------------------------------------------------------------------------- entry point

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (  # type: ignore[type-arg]
    _add_prepare,
    _add_assets,
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
