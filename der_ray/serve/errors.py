"""What an exception from a ``DeploymentHandle`` call means, in der_ray's typed errors.

A typed error raised inside a replica arrives wrapped in ``RayTaskError`` (possibly several layers
deep when it crossed two hops); a replica that died arrives as ``RayActorError``; an overloaded
deployment as Serve's ``BackPressureError``. ``as_der_ray_error`` unwraps and translates, so that the
ingress maps exactly one error hierarchy to HTTP. Imports: errors, ray.
"""

from __future__ import annotations

from der_ray.errors import DerRayError, ExpertUnavailableError


def unwrap(exc: BaseException) -> BaseException:
    """The innermost cause of nested ``RayTaskError``s."""
    from ray.exceptions import RayTaskError

    seen = 0
    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException) and seen < 8:
        exc, seen = exc.cause, seen + 1
    return exc


def as_der_ray_error(exc: BaseException, where: str) -> DerRayError:
    """``exc`` as a ``DerRayError``: typed causes pass through, dead or overloaded replicas become
    ``ExpertUnavailableError``. Anything else is a bug and is re-raised unchanged."""
    from ray.exceptions import OutOfMemoryError, RayActorError, WorkerCrashedError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    cause = unwrap(exc)
    if isinstance(cause, DerRayError):
        return cause
    if isinstance(cause, RayActorError | WorkerCrashedError | OutOfMemoryError):
        return ExpertUnavailableError(f"{where}: a replica died during the request ({type(cause).__name__})")
    if isinstance(cause, BackPressureError | DeploymentUnavailableError):
        return ExpertUnavailableError(f"{where}: overloaded or unavailable, retry later ({cause})")
    raise exc


def is_replica_failure(err: DerRayError) -> bool:
    """Worth one retry on another replica: the request itself was fine."""
    return isinstance(err, ExpertUnavailableError)
