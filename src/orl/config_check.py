"""Short descriptions of what is wrong in a workflow config, one line per problem (not the whole schema)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml


def config_problems(config: Mapping[str, Any], schema_path: str | os.PathLike, limit: int = 10) -> str:
    """Every violation of the schema as 'config <key.path>: <message>', at most `limit` lines."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(dict(config)), key=lambda e: list(e.path))
    lines = [f"config {'.'.join(str(p) for p in e.path) or '(top level)'}: {e.message}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more")
    return "invalid config (see workflow/schemas/config.schema.yaml):\n" + "\n".join(lines or ["unknown problem"])
