"""The OpenAI-compatible ingress (FastAPI under ``@serve.ingress``) and ``build_app``, the graph builder.

HTTP only: authenticate, validate (``protocol``), pick the backend deployment by ``model``, await it
with the request deadline, and translate the result or error. ``ERROR_STATUS`` below is the single
error -> HTTP mapping: client mistakes are 4xx, a deadline is 504, an expert replica that died is
retried once on another replica (the whole request: generation is stateless) and then 503.
Streams: the backend's first event (``Started``) is awaited before the response starts, so errors
that happen before any output still get their real status code; later failures become an SSE
``{"error": ...}`` event followed by ``[DONE]``.

Graph (one Serve application, so the expert deployments are shared by both graphs):
``Ingress -> {RouterDeployment, FusionDeployment, ExpertDeployment per expert}``, the router and the
fusion coordinator holding handles to the expert deployments.
``serve run der_ray/configs/serve.yaml`` or ``der-ray serve`` use ``build_app``.
Imports: core, serve.*, ray.serve, fastapi/starlette.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotation
# on the route methods (string annotations of a class Serve pickles by value do not resolve).
import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from der_ray.errors import (
    AuthenticationError,
    ConfigError,
    DeadlineExceededError,
    DerRayError,
    ExpertTimeoutError,
    ExpertUnavailableError,
    InvalidRequestError,
    RequestValidationError,
    UnknownModelError,
)
from der_ray.serve.config import FUSION_MODEL, ROUTER_MODEL, AuthConfig, LimitsConfig, ServeConfig
from der_ray.serve.errors import as_der_ray_error, is_replica_failure
from der_ray.serve.protocol import (
    SSE_DONE,
    Delta,
    Done,
    Endpoint,
    Failed,
    GenerationRequest,
    Started,
    chunk_body,
    error_body,
    meta_headers,
    models_body,
    parse_body,
    parse_request,
    response_body,
    sse,
)

log = logging.getLogger(__name__)

#: the one error -> (HTTP status, OpenAI error type) table; first match wins (subclasses first)
ERROR_STATUS: tuple[tuple[type[DerRayError], int, str], ...] = (
    (AuthenticationError, 401, "authentication_error"),
    (UnknownModelError, 404, "invalid_request_error"),
    (InvalidRequestError, 400, "invalid_request_error"),
    (DeadlineExceededError, 504, "timeout_error"),
    (ExpertTimeoutError, 504, "timeout_error"),
    (ExpertUnavailableError, 503, "service_unavailable_error"),
    (DerRayError, 500, "server_error"),
)


def error_status(err: DerRayError) -> tuple[int, dict[str, Any]]:
    """HTTP status and OpenAI error body of ``err``."""
    status, type_ = next((s, t) for cls, s, t in ERROR_STATUS if isinstance(err, cls))
    if isinstance(err, RequestValidationError):
        return status, error_body(str(err), type_, param=err.param, code=err.code)
    code = {401: "invalid_api_key", 503: "unavailable", 504: "timeout"}.get(status)
    return status, error_body(str(err), type_, code=code)


def error_response(err: DerRayError) -> JSONResponse:
    status, body = error_status(err)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


api = FastAPI(title="der_ray", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front of both graphs and of every expert (see the module docstring)."""

    def __init__(self, backends: Mapping[str, Any], limits: LimitsConfig, auth: AuthConfig,
                 retries: int = 1) -> None:
        self.backends = dict(backends)
        self.models = list(backends)
        self.limits, self.retries = limits, retries
        self.keys = [k.encode() for k in auth.load_keys()]
        self.replica_failures_retried = 0

    # ---------------------------------------------------------------- routes
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self.models}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except DerRayError as e:
            return error_response(e)
        return JSONResponse(models_body(self.models))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._handle("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle("completion", request)

    async def stats(self) -> dict[str, int]:
        """Counters for operators and tests (through a handle; not an HTTP route)."""
        return {"replica_failures_retried": self.replica_failures_retried}

    # ---------------------------------------------------------------- plumbing
    def _authenticate(self, request: Request) -> None:
        if not self.keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, k) for k in self.keys):
            raise AuthenticationError("missing or invalid API key (send 'Authorization: Bearer <key>')")

    async def _handle(self, endpoint: Endpoint, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout_s
        try:
            self._authenticate(request)
            req = parse_request(endpoint, parse_body(await request.body()), self.limits, self.models)
            if req.stream:
                return await self._stream(req, deadline)
            c = await self._complete(req, deadline)
            return JSONResponse(response_body(req, c), headers=meta_headers(c.meta))
        except DerRayError as e:
            return error_response(e)
        except Exception as e:  # a bug or an unexpected Ray failure: logged, still a JSON error body
            log.exception("request failed")
            return error_response(DerRayError(f"internal error: {type(e).__name__}"))

    def _remaining(self, deadline: float, req: GenerationRequest) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(f"request {req.request_id} exceeded its "
                                        f"{self.limits.request_timeout_s:.0f} s deadline")
        return left

    def _classify(self, exc: BaseException, req: GenerationRequest) -> DerRayError:
        from ray.exceptions import RayTaskError

        # A replica's own TimeoutError subclass arrives as RayTaskError (which also *is* a TimeoutError).
        if isinstance(exc, TimeoutError) and not isinstance(exc, RayTaskError | DerRayError):
            return DeadlineExceededError(f"request {req.request_id} exceeded its "
                                         f"{self.limits.request_timeout_s:.0f} s deadline")
        return as_der_ray_error(exc, f"model {req.model!r}")

    def _classify_safely(self, exc: BaseException, req: GenerationRequest) -> DerRayError:
        """``_classify`` for a stream already under way: an unexpected error becomes a 500 event."""
        try:
            return exc if isinstance(exc, DerRayError) else self._classify(exc, req)
        except Exception:
            log.exception("stream failed")
            return DerRayError(f"internal error: {type(exc).__name__}")

    async def _complete(self, req: GenerationRequest, deadline: float) -> Any:
        handle = self.backends[req.model]
        for attempt in range(self.retries + 1):
            response = handle.complete.remote(req)
            try:
                return await asyncio.wait_for(self._await(response), self._remaining(deadline, req))
            except Exception as e:
                err = self._classify(e, req)
                if isinstance(err, DeadlineExceededError):
                    response.cancel()
                if not (is_replica_failure(err) and attempt < self.retries):
                    raise err from None
                self.replica_failures_retried += 1
        raise AssertionError("unreachable")

    @staticmethod
    async def _await(response: Any) -> Any:
        return await response  # a coroutine for asyncio.wait_for

    async def _open_stream(self, req: GenerationRequest, deadline: float) -> tuple[Any, Started]:
        """Start the backend stream and wait for its ``Started`` event (retried on a dead replica)."""
        handle = self.backends[req.model].options(stream=True)
        for attempt in range(self.retries + 1):
            gen = handle.stream.remote(req)
            try:
                first = await asyncio.wait_for(gen.__anext__(), self._remaining(deadline, req))
            except Exception as e:
                err = self._classify(e, req)
                gen.cancel()
                if is_replica_failure(err) and attempt < self.retries:
                    self.replica_failures_retried += 1
                    continue
                raise err from None
            if isinstance(first, Failed):
                raise first.error
            assert isinstance(first, Started), first
            return gen, first
        raise AssertionError("unreachable")

    async def _stream(self, req: GenerationRequest, deadline: float) -> Response:
        gen, started = await self._open_stream(req, deadline)
        return StreamingResponse(self._sse(req, gen, deadline), media_type="text/event-stream",
                                 headers={**meta_headers(started.meta), "Cache-Control": "no-cache"})

    async def _sse(self, req: GenerationRequest, gen: Any, deadline: float) -> AsyncIterator[str]:
        created = int(time.time())
        yield sse(chunk_body(req, created, text="" if req.endpoint == "chat" else None, first=True))
        sent_text = False
        retries_left = self.retries
        while True:
            try:
                event = await asyncio.wait_for(gen.__anext__(), self._remaining(deadline, req))
            except StopAsyncIteration:
                break
            except Exception as e:
                gen.cancel()
                event = Failed(self._classify_safely(e, req))
            if isinstance(event, Failed) and is_replica_failure(event.error) and retries_left > 0 \
                    and not sent_text:
                retries_left -= 1  # nothing shown yet: start over on healthy replicas
                self.replica_failures_retried += 1
                try:
                    gen, _ = await self._open_stream(req, deadline)
                    continue
                except DerRayError as err:
                    event = Failed(err)
            if isinstance(event, Delta) and event.text:
                sent_text = True
                yield sse(chunk_body(req, created, text=event.text))
            elif isinstance(event, Done):
                yield sse(chunk_body(req, created, finish_reason=event.completion.finish_reason,
                                     text=None, done=event.completion))
                break
            elif isinstance(event, Failed):
                yield sse(error_status(event.error)[1])
                break
        yield SSE_DONE


# ------------------------------------------------------------------------------------------ graph

def build_graph(cfg: ServeConfig) -> Any:
    """The bound application for ``cfg`` (see the module docstring)."""
    from der_ray._yaml_dataclass import build
    from der_ray.fusion.decoder import FusionConfig
    from der_ray.serve.experts import ExpertDeployment
    from der_ray.serve.fusion import FusionDeployment
    from der_ray.serve.router import RouterDeployment, check_checkpoint, resolve_checkpoint

    pool = cfg.load_pool()
    experts: dict[str, Any] = {}
    for ecfg in pool.experts:
        d = cfg.expert_deployment(ecfg.name)
        experts[ecfg.name] = ExpertDeployment.options(  # type: ignore[attr-defined]
            name=f"Expert-{ecfg.name}", health_check_period_s=d.health_check_period_s, **d.serve_options(),
        ).bind(ecfg, d, pool.cache_dir)
    backends: dict[str, Any] = {}
    if cfg.router.checkpoint:
        from der_ray.routing.policy_io import load_module

        ckpt = resolve_checkpoint(cfg.router.checkpoint)  # checked here so a mismatch fails the deploy
        check_checkpoint(load_module(ckpt), ckpt, pool.names, cfg.router.router)
        rd = cfg.router.deployment
        backends[ROUTER_MODEL] = RouterDeployment.options(  # type: ignore[attr-defined]
            name="Router", **rd.serve_options(),
        ).bind(pool, cfg.router.router, cfg.router.checkpoint, experts, max_workers=rd.max_ongoing_requests)
    if cfg.fusion.enabled:
        members = list(cfg.fusion.members or pool.names)
        try:  # fail at build time, not on the first request
            build(FusionConfig, dict(cfg.fusion.decoder), "serve.fusion.decoder")
        except ConfigError as e:  # FusionConfig's own checks name its fields, not the YAML path
            raise (e if str(e).startswith("serve.") else ConfigError(f"serve.fusion.decoder: {e}")) from None
        fd = cfg.fusion.deployment
        backends[FUSION_MODEL] = FusionDeployment.options(  # type: ignore[attr-defined]
            name="Fusion", **fd.serve_options(),
        ).bind(pool, members, cfg.fusion.main or members[0], cfg.fusion.decoder,
               {m: experts[m] for m in members}, max_workers=cfg.fusion.decoders)
    backends.update(experts)
    return Ingress.options(name="Ingress", **cfg.ingress.serve_options()).bind(  # type: ignore[attr-defined]
        backends, cfg.limits, cfg.auth, cfg.limits.replica_retries)


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Application builder for ``serve run`` / ``serve deploy``.

    ``import_path: der_ray.serve.app:build_app`` in the Serve YAML.

    ``args`` is the der_ray serve config mapping (``applications[0].args`` of the Serve YAML).
    """
    from der_ray.serve.config import serve_config_from_dict

    return build_graph(serve_config_from_dict(dict(args or {})))
