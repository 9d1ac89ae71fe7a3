"""The der_ray exception hierarchy.

Every error the core raises on purpose is a ``DerRayError``; boundaries (the CLI, HTTP ingress, jobs)
map these classes to exit codes and status codes in one place. Messages name what was wrong and,
where there is a fixed set of valid choices, list them. Imports: stdlib only.
"""

from __future__ import annotations


class DerRayError(Exception):
    """Base class of every error der_ray raises deliberately."""

    #: process exit code used by the CLI and jobs for this kind of error
    exit_code: int = 1


class ConfigError(DerRayError, ValueError):
    """Invalid configuration; the message names the offending YAML key (``experts[1].source``)."""

    exit_code = 2


class InvalidRequestError(DerRayError, ValueError):
    """A call with bad arguments: empty prompt, ``max_new_tokens <= 0``, unknown session, ..."""

    exit_code = 2


class AssetError(DerRayError):
    """A model or data asset cannot be located, verified or converted."""

    exit_code = 3


class AssetMissingError(AssetError, FileNotFoundError):
    """An asset's files are not installed (the message says which package to install)."""


class AssetChecksumError(AssetError):
    """An assembled asset's sha256 differs from the pinned one; der_ray refuses to use it."""


class DatasetError(DerRayError):
    """A dataset cannot be found, read or split."""

    exit_code = 3


class ScorerError(DerRayError):
    """A scorer is unknown or cannot score the given reference."""


class ExpertError(DerRayError):
    """An expert failed to answer."""

    exit_code = 4


class UnknownExpertError(ExpertError, KeyError):
    """No expert with that name is configured; the message lists the configured names."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class ExpertTimeoutError(ExpertError, TimeoutError):
    """An expert did not answer within its timeout."""


class ExpertUnavailableError(ExpertError):
    """An expert's actor crashed or is restarting; the call was not completed."""


class VocabAlignmentError(DerRayError):
    """Members of a fusion ensemble cannot be aligned (for example: no common anchor tokens)."""


class RoutingError(DerRayError):
    """The router cannot produce a route (bad checkpoint, observation mismatch, ...)."""


# ------------------------------------------------------------------------------------------ serving
# Raised by der_ray.serve; the HTTP ingress maps each class to a status code in one table.


class RequestValidationError(InvalidRequestError):
    """An HTTP request the API cannot accept (bad JSON, wrong type, over a limit, unsupported
    parameter). ``param`` names the offending request field (OpenAI's ``error.param``), ``code`` a
    stable machine-readable reason."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class UnknownModelError(RequestValidationError):
    """The request names a ``model`` that is not served; the message lists the served names."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_not_found")


class AuthenticationError(DerRayError):
    """Missing or wrong bearer API key (only when API keys are configured)."""

    exit_code = 2


class DeadlineExceededError(DerRayError, TimeoutError):
    """A request did not finish within the server's request deadline."""

    exit_code = 4
