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


def results_folder(config: Mapping[str, Any]) -> str:
    """config["results"] with `~` expanded, refused when empty, the file-system root, a file, or in the dataset."""
    text = str(config.get("results", "")).strip()
    if not text:
        raise ValueError("config results: empty; name the folder every artifact is written under (e.g. results)")
    folder = os.path.normpath(os.path.expanduser(text))
    resolved = os.path.realpath(folder)
    if resolved == os.path.dirname(resolved):
        raise ValueError(f"config results: {text!r} is the file-system root; name a folder for the artifacts")
    if os.path.exists(resolved) and not os.path.isdir(resolved):
        raise ValueError(f"config results: {text!r} is a file, not a folder")
    dataset = config.get("dataset") or {}
    images = dataset.get("images") if dataset.get("kind", "demo") != "demo" else None
    if images:
        root = os.path.realpath(os.path.expanduser(str(images)))
        if resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"config results: {text!r} is inside the dataset folder {images}; the index would list the "
                "figures as training images and every run would change the dataset: put results outside it"
            )
    return folder
