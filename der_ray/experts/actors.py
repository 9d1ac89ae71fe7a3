"""Experts as Ray actors: placement, lookup by name, and calls that end in a result or a typed error.

The only module under ``experts/`` that imports Ray. ``HFExpert`` becomes an actor through
``ray.remote``; resources come from the expert's config: with GPUs in the cluster the actor asks
for ``resources.num_gpus`` (1 or a fraction) and torch uses whatever device Ray made visible;
without GPUs it asks for a fractional ``num_cpus`` so three experts share two cores.

Failure policy: actors restart up to ``resources.max_restarts`` times, but calls are *not* retried
(``max_task_retries=0``): a session call re-run on a fresh actor would hit a cache that no longer
exists, and retrying the call that crashed the actor crashes it again. Callers instead get
``ExpertUnavailableError`` (crash or restart in progress) or ``ExpertTimeoutError`` (no answer in
time; the task is cancelled), never a hang.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from der_ray.config import ExpertConfig, PoolConfig
from der_ray.errors import DerRayError, ExpertTimeoutError, ExpertUnavailableError, UnknownExpertError

ACTOR_PREFIX = "der_ray.expert."


def actor_name(expert: str) -> str:
    return ACTOR_PREFIX + expert


def placement(cfg: ExpertConfig, cluster_gpus: float) -> dict[str, Any]:
    """Ray actor options for ``cfg`` on a cluster with ``cluster_gpus`` GPUs (pure; tested without Ray)."""
    use_gpu = cluster_gpus > 0 and cfg.resources.num_gpus > 0
    return {
        "num_cpus": cfg.resources.num_cpus,
        "num_gpus": cfg.resources.num_gpus if use_gpu else 0,
        "max_restarts": cfg.resources.max_restarts,
        "max_task_retries": 0,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(cfg.resources.threads),
                                     "TOKENIZERS_PARALLELISM": "false"}},
    }


class RemoteExpert:
    """A handle to one expert actor with the same methods as ``HFExpert``, plus timeouts.

    ``submit(method, ...)`` starts a call and returns its ObjectRef so that several experts can work
    in parallel; ``result(ref)`` waits for it with the same error mapping as the blocking methods.
    """

    def __init__(self, name: str, handle: Any, timeout_s: float) -> None:
        self.name, self.handle, self.timeout_s = name, handle, timeout_s

    @classmethod
    def lookup(cls, name: str, namespace: str = "der_ray", timeout_s: float = 600.0) -> RemoteExpert:
        """Find a running expert actor by name (from env runners, Tune trials, other jobs)."""
        import ray

        try:
            return cls(name, ray.get_actor(actor_name(name), namespace=namespace), timeout_s)
        except ValueError:
            raise UnknownExpertError(f"no running expert actor {name!r} in namespace {namespace!r}; "
                                     "start it with ExpertPool(...).start()") from None

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.handle, method).remote(*args, **kwargs)

    def result(self, ref: Any, timeout_s: float | None = None) -> Any:
        return resolve(self.name, ref, self.timeout_s if timeout_s is None else timeout_s)

    def ready(self, ref: Any) -> bool:
        """Whether a submitted call has finished (``result`` would not block)."""
        return is_ready(ref)

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        return self.result(self.submit(method, *args, **kwargs), timeout_s)

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)


def is_ready(ref: Any) -> bool:
    """Whether an ObjectRef's task has finished, without waiting."""
    import ray

    done, _ = ray.wait([ref], timeout=0)
    return bool(done)


def resolve(name: str, ref: Any, timeout_s: float) -> Any:
    """``ray.get`` with der_ray's error mapping (see the module docstring)."""
    import ray
    from ray import exceptions as rex

    try:
        return ray.get(ref, timeout=timeout_s)
    except rex.GetTimeoutError:
        ray.cancel(ref, force=False)
        raise ExpertTimeoutError(f"expert {name!r} did not answer within {timeout_s:.0f} s") from None
    except rex.RayTaskError as e:
        if isinstance(e.cause, DerRayError):  # a typed error raised inside the actor: pass it on
            raise e.cause from None
        raise ExpertUnavailableError(f"expert {name!r} failed: {e.cause!r}") from e
    except (rex.ActorDiedError, rex.ActorUnavailableError, rex.RayActorError) as e:
        raise ExpertUnavailableError(f"expert {name!r} crashed or is restarting; retry later ({e})") from None


class ExpertPool:
    """Starts (or finds) one named actor per configured expert and hands out ``RemoteExpert``s."""

    def __init__(self, cfg: PoolConfig, *, cache_dir: str | None = None) -> None:
        self.cfg = cfg
        self.cache_dir = cache_dir or cfg.cache_dir
        self.experts: dict[str, RemoteExpert] = {}

    def start(self, names: Sequence[str] | None = None, *, wait: bool = True) -> dict[str, RemoteExpert]:
        """Create the actors (reusing live ones of the same name) and wait until each has loaded."""
        import ray

        from der_ray.experts.hf import HFExpert

        gpus = ray.cluster_resources().get("GPU", 0.0)
        cls = ray.remote(HFExpert)
        started = {}
        for name in names or self.cfg.names:
            ecfg = self.cfg.expert(name)
            handle = cls.options(  # type: ignore[attr-defined]
                name=actor_name(name), namespace=self.cfg.namespace, get_if_exists=True,
                **placement(ecfg, gpus),
            ).remote(ecfg, cache_dir=self.cache_dir)
            started[name] = RemoteExpert(name, handle, ecfg.resources.timeout_s)
        self.experts.update(started)
        if wait:
            refs = {n: e.submit("health") for n, e in started.items()}
            for n, ref in refs.items():
                started[n].result(ref)
        return started

    def __enter__(self) -> ExpertPool:
        """Start every configured expert; the pool holds their handles until ``__exit__``.

        Non-detached actors die with their last handle, so whoever needs the actors alive (a job
        whose env runners look them up by name) must keep the pool alive: ``with ExpertPool(cfg):``.
        Exiting drops the handles without killing actors that other handles still use.
        """
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.experts.clear()

    def __getitem__(self, name: str) -> RemoteExpert:
        try:
            return self.experts[name]
        except KeyError:
            raise UnknownExpertError(f"unknown or unstarted expert {name!r}; started: "
                                     f"{', '.join(self.experts) or 'none'}") from None

    def generate_all(self, prompts: Sequence[str], **kwargs: Any) -> dict[str, Any]:
        """Ask every started expert the same prompts in parallel; returns name -> list[Generation]."""
        refs = {n: e.submit("generate", list(prompts), **kwargs) for n, e in self.experts.items()}
        return {n: self.experts[n].result(r) for n, r in refs.items()}

    def shutdown(self) -> None:
        """Kill the actors this pool started or found."""
        import ray

        for e in self.experts.values():
            ray.kill(e.handle, no_restart=True)
        self.experts.clear()
