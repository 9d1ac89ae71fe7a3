"""Typed configuration of the HTTP service: deployments, limits, auth and HTTP binding.

One YAML file serves both ``serve run``/``serve deploy`` (Ray's format: the der_ray config sits under
``applications[0].args``) and ``der-ray serve --config`` (either that file or the bare der_ray
mapping). Errors name the YAML key (``serve.limits.max_tokens_cap``). Imports: core only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from der_ray._yaml_dataclass import build, check
from der_ray.config import PoolConfig, RouterConfig, load_pool_config, pool_from_dict
from der_ray.errors import ConfigError

ROUTER_MODEL = "der-router"
FUSION_MODEL = "deepen-fusion"


@dataclass(frozen=True)
class AutoscalingConfig:
    """Serve autoscaling for one deployment (replaces ``num_replicas`` when set)."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0

    def __post_init__(self) -> None:
        check(1 <= self.min_replicas <= self.max_replicas, "min_replicas",
              f"must satisfy 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        check(self.target_ongoing_requests > 0, "target_ongoing_requests", "must be > 0")


@dataclass(frozen=True)
class DeploymentConfig:
    """Replica count, admission and CPU share of one deployment."""

    num_replicas: int = 1
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = 32
    """Requests a replica accepts at once (Serve's default of 5 would cap batches and graph fan-in)."""
    num_cpus: float = 0.05
    """Logical CPUs per replica: the graph layers mostly wait on experts, so a sliver is enough."""

    def __post_init__(self) -> None:
        check(self.num_replicas >= 1, "num_replicas", f"must be >= 1, got {self.num_replicas}")
        check(self.max_ongoing_requests >= 1, "max_ongoing_requests", "must be >= 1")
        check(self.num_cpus >= 0, "num_cpus", "must be >= 0")

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests,
                                "ray_actor_options": {"num_cpus": self.num_cpus}}
        if self.autoscaling is not None:
            a = self.autoscaling
            opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                          "target_ongoing_requests": a.target_ongoing_requests}
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


@dataclass(frozen=True)
class ExpertDeploymentConfig(DeploymentConfig):
    """An expert deployment: the replica is a thin batching front of one model actor it owns."""

    max_ongoing_requests: int = 16
    max_batch_size: int = 8
    """``@serve.batch`` size for generation; must not exceed ``max_ongoing_requests``."""
    batch_wait_timeout_s: float = 0.01
    health_check_period_s: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        # Serve admits at most max_ongoing_requests per replica: a larger batch could never fill.
        check(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
              f"must be >= max_batch_size ({self.max_batch_size}), got {self.max_ongoing_requests}")
        check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", "must be >= 0")
        check(self.health_check_period_s > 0, "health_check_period_s", "must be > 0")


@dataclass(frozen=True)
class RouterServeConfig:
    """The routing graph; served as ``der-router`` only when a checkpoint is given."""

    checkpoint: str | None = None
    """Training storage dir (its ``checkpoints/BEST``, else ``LATEST``) or an algorithm checkpoint dir."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """Must match the settings the checkpoint was trained with (encoder, t_max, KTP)."""
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)


@dataclass(frozen=True)
class FusionServeConfig:
    """The DeePEn fusion graph, served as ``deepen-fusion``."""

    enabled: bool = True
    members: tuple[str, ...] = ()
    """Expert names to fuse (default: every expert)."""
    main: str | None = None
    """The member whose vocabulary emits tokens (default: the first member)."""
    decoder: dict[str, Any] = field(default_factory=dict)
    """``FusionConfig`` fields (top_k, lr, ...), validated when the service is built."""
    deployment: DeploymentConfig = field(default_factory=lambda: DeploymentConfig(max_ongoing_requests=16))
    decoders: int = 2
    """Fused decodes a replica runs at once (one decoder each; further requests wait for one). Each
    decoder keeps its own vocabularies, anchors and embedding-row cache (hundreds of MB with real
    experts), so scale with replicas rather than with this number."""

    def __post_init__(self) -> None:
        check(self.decoders >= 1, "decoders", f"must be >= 1, got {self.decoders}")
        check(self.main is None or not self.members or self.main in self.members, "main",
              f"must be one of members {list(self.members)}, got {self.main!r}")


@dataclass(frozen=True)
class LimitsConfig:
    """What the API accepts; anything beyond is a 4xx, never a 5xx."""

    max_tokens_cap: int = 512
    default_max_tokens: int = 128
    max_prompt_chars: int = 16_000
    """Length cap of the whole prompt (all messages), in characters (checked before tokenising)."""
    max_messages: int = 64
    max_stop: int = 4
    request_timeout_s: float = 300.0
    """Deadline of one request in the ingress; past it the answer is 504."""
    replica_retries: int = 1
    """Whole-request re-runs after a replica died mid-request (generation is stateless; a fusion
    session cannot move, so fusion restarts on healthy replicas too); then 503."""

    def __post_init__(self) -> None:
        check(self.replica_retries >= 0, "replica_retries", "must be >= 0")
        check(self.max_tokens_cap >= 1, "max_tokens_cap", "must be >= 1")
        check(1 <= self.default_max_tokens <= self.max_tokens_cap, "default_max_tokens",
              f"must be in [1, max_tokens_cap={self.max_tokens_cap}], got {self.default_max_tokens}")
        check(self.max_prompt_chars >= 1 and self.max_messages >= 1 and self.max_stop >= 0,
              "max_prompt_chars", "limits must be positive")
        check(self.request_timeout_s > 0, "request_timeout_s", "must be > 0")


@dataclass(frozen=True)
class AuthConfig:
    """Optional bearer API keys; with none configured the API is open (it binds loopback by default)."""

    api_keys_env: str = "DER_RAY_API_KEYS"
    """Environment variable holding comma-separated keys (read where the ingress runs)."""
    api_keys_file: str | None = None
    """File with one key per line (``#`` comments allowed)."""

    def load_keys(self) -> frozenset[str]:
        """The configured keys (env and file together); empty means auth is off.

        Raises:
            ConfigError: ``api_keys_file`` is set but unreadable.
        """
        keys = {k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()}
        if self.api_keys_file:
            path = Path(self.api_keys_file).expanduser()
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise ConfigError(f"serve.auth.api_keys_file: cannot read {path}: {e}") from None
            keys |= {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
        return frozenset(keys)


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    """Loopback unless configured: the API has no TLS and auth is optional."""
    port: int = 8000

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", f"must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``build_app`` needs."""

    pool: Any = None
    """Expert pool: a YAML path, an inline mapping, or null for the packaged default."""
    experts: ExpertDeploymentConfig = field(default_factory=ExpertDeploymentConfig)
    expert_overrides: dict[str, ExpertDeploymentConfig] = field(default_factory=dict)
    """Per-expert deployment settings, by expert name."""
    router: RouterServeConfig = field(default_factory=RouterServeConfig)
    fusion: FusionServeConfig = field(default_factory=FusionServeConfig)
    ingress: DeploymentConfig = field(default_factory=lambda: DeploymentConfig(max_ongoing_requests=64))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    app_name: str = "der_ray"
    route_prefix: str = "/"

    def __post_init__(self) -> None:
        check(self.pool is None or isinstance(self.pool, str | dict), "pool",
              "must be a YAML path, a mapping or null")

    def load_pool(self) -> PoolConfig:
        if isinstance(self.pool, dict):
            return pool_from_dict(self.pool)
        return load_pool_config(self.pool)

    def expert_deployment(self, name: str) -> ExpertDeploymentConfig:
        return self.expert_overrides.get(name, self.experts)


def serve_config_from_dict(data: Any) -> ServeConfig:
    """Validate a YAML-shaped mapping, then the cross-references (expert names, fusion settings)."""
    cfg = build(ServeConfig, data or {}, "serve")
    pool = cfg.load_pool()
    unknown = [n for n in (*cfg.fusion.members, *cfg.expert_overrides) if n not in pool.names]
    if unknown:
        raise ConfigError(f"serve.fusion.members / serve.expert_overrides: unknown expert(s) {unknown}; "
                          f"configured experts: {', '.join(pool.names)}")
    clash = {ROUTER_MODEL, FUSION_MODEL} & set(pool.names)
    if clash:
        raise ConfigError(f"expert names {sorted(clash)} clash with the served graph names")
    return cfg


def load_serve_config(path: str | os.PathLike[str] | None) -> ServeConfig:
    """Load a serve config: Ray's format (``applications[0].args`` + ``http_options``) or the bare one."""
    if path is None:
        return serve_config_from_dict({})
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if isinstance(data, dict) and "applications" in data:
        apps = data.get("applications") or [{}]
        args = dict(apps[0].get("args") or {})
        http = data.get("http_options") or {}
        args.setdefault("http", {k: http[k] for k in ("host", "port") if k in http})
        args.setdefault("app_name", apps[0].get("name", "der_ray"))
        args.setdefault("route_prefix", apps[0].get("route_prefix", "/"))
        data = args
    try:
        return serve_config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
