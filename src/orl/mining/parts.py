"""Sharded part artifacts: read each part's range and settings, and check that the parts tile the image list."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orl.artifacts import ArtifactError, open_artifact


@dataclass
class PartInfo:
    """One part artifact: its file, the images [start, stop) it holds, and the settings it was made with."""

    path: Path
    start: int
    stop: int
    params: dict[str, Any]
    params_digest: str
    attrs: dict[str, Any] = field(repr=False, default_factory=dict)


def read_part(
    path: str | os.PathLike, stage: str, like: str | os.PathLike, csr: str, rows_per_image: int = 1
) -> PartInfo:
    """Open a part (refusing one from another stage or image list) and check its CSR row count against its range."""
    with open_artifact(path, stage=stage, like=like) as art:
        start, stop = int(art.attrs["start"]), int(art.attrs["stop"])
        rows = art.dataset(f"{csr}/offsets").shape[0] - 1
        if rows != (stop - start) * rows_per_image:
            raise ArtifactError(
                f"{art.path}: {csr!r} has {rows} rows but the part claims images [{start}, {stop}) "
                f"({rows_per_image} row(s) per image)"
            )
        return PartInfo(art.path, start, stop, dict(art.params), str(art.attrs["params_digest"]), dict(art.attrs))


def check_parts(parts: Sequence[PartInfo], n: int, index_path: str | os.PathLike, what: str) -> list[PartInfo]:
    """The parts sorted by range, after checking equal settings and that they cover [0, n) exactly once."""
    if not parts:
        raise ArtifactError(f"no {what} parts given")
    for part in parts[1:]:
        if part.params_digest != parts[0].params_digest:
            raise ArtifactError(
                f"{part.path} was made with {part.params} but {parts[0].path} with {parts[0].params}: rerun every "
                f"{what} shard with the same settings"
            )
    ordered = sorted(parts, key=lambda p: (p.start, p.stop))
    expect = 0
    for part in ordered:
        if part.start < expect:
            raise ArtifactError(
                f"{part.path} covers images [{part.start}, {part.stop}) but images up to {expect} are already "
                f"covered by another {what} part: two parts overlap"
            )
        if part.start > expect:
            raise ArtifactError(
                f"no {what} part covers images [{expect}, {part.start}) of {n} in {index_path}: a shard is missing"
            )
        expect = part.stop
    if expect != n:
        raise ArtifactError(f"no {what} part covers images [{expect}, {n}) of {n} in {index_path}: a shard is missing")
    return ordered
