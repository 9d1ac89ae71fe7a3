"""Offline validation of Ray cluster launcher configs (``cluster.yaml``, ``cluster.local.yaml``).

``ray up`` has no dry run in Ray 2.60 and needs SSH or cloud credentials, so a broken config is
otherwise found only when a cluster fails to start. This module runs Ray's own checks without any:
the launcher's JSON schema (``ray/autoscaler/ray-schema.json``: unknown keys, wrong types) on the
file as written, then ``prepare_config`` + ``validate_config`` (provider defaults merged,
``head_node_type`` membership, min/max workers). Every failure becomes a ``ConfigError`` whose
message starts with the offending key.

Imports: stdlib, yaml, ``der_ray.errors``; Ray, jsonschema and click lazily (they ship with Ray).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from der_ray.errors import ConfigError


def load_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a launcher YAML file; raises ``ConfigError`` when it is missing or not a mapping."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"cluster config {str(p)!r} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cluster config {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cluster config {str(p)!r}: expected a mapping at the top level")
    return data


def validate_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate the launcher config at ``path`` as ``ray up`` would, offline.

    Returns:
        The prepared config (provider defaults merged), as the autoscaler would see it.

    Raises:
        ConfigError: naming the offending key, e.g. ``available_node_types.gpu_worker: unknown key
            'resourcez' ...`` or ``head_node_type: missing ...``.
    """
    cfg = load_cluster_config(path)
    _check_schema(cfg)
    _check_node_types(cfg)
    return _check_prepared(cfg)


def _schema() -> dict[str, Any]:
    import ray

    schema: dict[str, Any] = json.loads(
        (Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return schema


def _check_schema(cfg: dict[str, Any]) -> None:
    import jsonschema

    # best_match picks the most specific error (the deepest path), not the first one found.
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(_schema()).iter_errors(cfg))
    if error is None:
        return
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    message = error.message
    if error.validator == "additionalProperties":
        message = message.replace("Additional properties are not allowed", "unknown key(s)")
    raise ConfigError(f"{key}: {message}")


def _check_node_types(cfg: dict[str, Any]) -> None:
    """The checks whose Ray messages would not name the key (Ray fills in a default head type)."""
    types = cfg.get("available_node_types")
    if not types:
        return
    head = cfg.get("head_node_type")
    if head is None:
        raise ConfigError(f"head_node_type: missing; must name one of available_node_types "
                          f"({', '.join(types)})")
    if head not in types:
        raise ConfigError(f"head_node_type: {head!r} is not one of available_node_types "
                          f"({', '.join(types)})")


def _check_prepared(cfg: dict[str, Any]) -> dict[str, Any]:
    import click
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config  # no public equivalent

    provider = cfg.get("provider", {}).get("type")
    try:
        prepared = prepare_config(cfg)
        validate_config(prepared)
    except NotImplementedError:  # the provider registry's answer to an unknown type
        raise ConfigError(f"provider.type: unsupported node provider {provider!r}") from None
    except jsonschema.ValidationError as e:
        key = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ConfigError(f"{key} (after merging {provider} defaults): {e.message}") from None
    except click.ClickException as e:  # the local provider aborts through Ray's CLI logger
        raise ConfigError(f"provider ({provider}): {e.format_message()}") from None
    except (ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"{provider} cluster config: {e}") from None
    return prepared
