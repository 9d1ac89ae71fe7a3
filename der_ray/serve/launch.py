"""Start the HTTP service: shared by ``der-ray serve`` and ``jobs/serve.py`` (entrypoints only).

``apply_overrides`` turns command-line flags into a validated ``ServeConfig``; ``deploy`` starts
Serve's proxy on the configured host/port (127.0.0.1 unless configured) and runs the application;
``serve_forever`` blocks until interrupted and then shuts Serve down. On a cluster that outlives the
caller (``ray job submit``, ``--address``) the app keeps running after ``deploy`` returns, as Serve
applications do. Imports: serve.{app,config}, runtime, ray.serve.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time

from der_ray.serve.config import FUSION_MODEL, ROUTER_MODEL, ServeConfig, load_serve_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``der-ray serve`` and ``jobs/serve.py``."""
    p.add_argument("--config", help="serve YAML (Ray's format, e.g. der_ray/configs/serve.yaml, or bare)")
    p.add_argument("--pool", help="expert pool YAML (overrides the config's pool)")
    p.add_argument("--router-checkpoint", help="router training dir or checkpoint: serves der-router")
    p.add_argument("--no-fusion", action="store_true", help="do not serve deepen-fusion")
    p.add_argument("--fusion-members", nargs="*", help="experts to fuse (first is the main member)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--api-keys-file", help="bearer API keys, one per line ($DER_RAY_API_KEYS works too)")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local loopback Ray)")
    p.add_argument("--detach", action="store_true",
                   help="return once deployed (the app keeps running on a cluster that outlives us)")


def apply_overrides(args: argparse.Namespace) -> ServeConfig:
    """The config file's settings with the command-line flags applied (validated again)."""
    from der_ray.config import config_to_dict
    from der_ray.serve.config import serve_config_from_dict

    data = config_to_dict(load_serve_config(args.config))
    if args.pool:
        data["pool"] = args.pool
    if args.router_checkpoint:
        data["router"]["checkpoint"] = args.router_checkpoint
    if args.no_fusion:
        data["fusion"]["enabled"] = False
    if args.fusion_members:
        data["fusion"].update(members=list(args.fusion_members), main=args.fusion_members[0])
    if args.host:
        data["http"]["host"] = args.host
    if args.port is not None:
        data["http"]["port"] = args.port
    if args.api_keys_file:
        data["auth"]["api_keys_file"] = args.api_keys_file
    return serve_config_from_dict(data)


def deploy(cfg: ServeConfig, stack: contextlib.ExitStack, address: str | None = None) -> str:
    """Start Ray (or connect), Serve on ``cfg.http``, and the application; returns the base URL."""
    from ray import serve

    from der_ray.runtime import connect_ray
    from der_ray.serve.app import build_graph

    connect_ray(stack, address)
    serve.start(http_options={"host": cfg.http.host, "port": cfg.http.port})
    serve.run(build_graph(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    prefix = cfg.route_prefix.rstrip("/")
    return f"http://{cfg.http.host}:{cfg.http.port}{prefix}"


def served_models(cfg: ServeConfig) -> list[str]:
    models = [ROUTER_MODEL] if cfg.router.checkpoint else []
    models += [FUSION_MODEL] if cfg.fusion.enabled else []
    return models + list(cfg.load_pool().names)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    """Deploy, print where, and (unless ``--detach``) serve until interrupted."""
    from ray import serve

    from der_ray.runtime import setup_logging

    setup_logging()
    cfg = apply_overrides(args)
    url = deploy(cfg, stack, args.address)
    print(f"der_ray API at {url}/v1 (models: {', '.join(served_models(cfg))}); "
          f"auth {'on' if cfg.auth.load_keys() else 'off'}", flush=True)
    if args.detach:
        return 0
    stack.callback(serve.shutdown)  # runs before a Ray this process started is shut down
    # SIGTERM (service managers; background jobs, which ignore SIGINT) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
    print("shutting down", flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
