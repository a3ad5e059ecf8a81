"""The HDF5 artifact store: the only code in orl that reads or writes HDF5 files.

Every artifact carries the same root attributes (format version, stage, the digest of the image list it indexes,
a digest of the stage's parameters, package version, creation time). Writes go to a temporary file in the target
folder, are validated after reopening, and only then renamed into place, so a crash never leaves a file at the
final path. Ragged per-image data (boxes, pairs) is stored as CSR: a flat `values` array plus int64 `offsets`.
Every numeric dataset, small or large, carries a Fletcher-32 checksum per chunk, and a read that fails its checksum
or its decompression is reported as an ArtifactError naming the file and the dataset.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from orl import __version__
from orl.fileio import atomic_path, atomic_write

FORMAT_VERSION = 1
# 2: the image-list digest covers every image file's bytes (1: names, ids and sizes only). Recorded in every artifact.
IMAGE_DIGEST_VERSION = 2
_RESERVED = ("format_version", "stage", "image_list_digest", "image_digest_version", "params_digest", "params",
             "orl_version", "created")
_CSR_MARK = "csr"


class ArtifactError(RuntimeError):
    """An artifact is missing, malformed, from another stage, or made from a different image list."""


@dataclass
class Csr:
    """Ragged rows stored as one flat array and int64 row offsets (row i is values[offsets[i]:offsets[i+1]])."""

    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) == 0 or self.offsets[0] != 0:
            raise ValueError("CSR offsets must be a 1-d array starting at 0")
        if np.any(np.diff(self.offsets) < 0) or self.offsets[-1] != len(self.values):
            raise ValueError(
                f"CSR offsets must be non-decreasing and end at len(values) ({self.offsets[-1]} != {len(self.values)})"
            )

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray], row_shape: tuple[int, ...] = (), dtype: Any = None) -> Csr:
        """Build a CSR from a list of per-row arrays (empty rows allowed)."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        nonempty = [np.asarray(r, dtype=dtype) for r in rows if len(r)]
        if nonempty:
            values = np.concatenate(nonempty, axis=0)
        else:
            values = np.zeros((0, *row_shape), dtype=dtype if dtype is not None else np.float32)
        return cls(values, offsets)

    @classmethod
    def concatenate(cls, parts: Sequence[Csr]) -> Csr:
        """Stack CSR blocks row-wise (used to gather shards in image order)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        values = np.concatenate([p.values for p in parts], axis=0)
        offsets = [np.zeros(1, dtype=np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        return cls(values, np.concatenate(offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """Number of entries in each row."""
        return np.diff(self.offsets)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]


def digest_params(params: Mapping[str, Any]) -> str:
    """A stable short digest of a JSON-serialisable parameter mapping (key order does not matter)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_attr(value: Any) -> Any:
    """HDF5 attributes hold scalars, strings and arrays; anything else is stored as JSON text."""
    if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "iufb":
        return value
    return "json:" + json.dumps(value, sort_keys=True, default=str)


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_array(group: h5py.Group, name: str, data: np.ndarray) -> None:
    data = np.asarray(data)
    if data.dtype.kind in "US":
        group.create_dataset(name, data=data.astype(object), dtype=h5py.string_dtype())
        return
    kwargs: dict[str, Any] = {}
    if data.size >= 1024 and data.ndim >= 1:
        # Chunk along rows so a reader can pull one image's slice without loading the rest.
        row_bytes = max(1, data.itemsize * int(np.prod(data.shape[1:], dtype=np.int64)))
        rows = int(max(1, min(data.shape[0], (1 << 20) // row_bytes)))
        kwargs = dict(chunks=(rows, *data.shape[1:]), compression="gzip", compression_opts=4, shuffle=True,
                      fletcher32=True)
    elif data.size > 0 and data.ndim >= 1:
        kwargs = dict(chunks=data.shape, fletcher32=True)  # one chunk: the checksum needs a chunked layout
    group.create_dataset(name, data=data, **kwargs)


def _corrupt(path: Path, name: str, error: OSError) -> ArtifactError:
    return ArtifactError(f"{path}: dataset {name.lstrip('/')} cannot be read: the file is damaged "
                         f"({str(error).splitlines()[0]}); rerun the stage that wrote it")


class CheckedDataset:
    """An h5py dataset whose reads name the artifact and the dataset when the file is damaged."""

    def __init__(self, dataset: h5py.Dataset, path: Path, name: str | None = None) -> None:
        self._dataset, self._path, self._name = dataset, path, name or dataset.name

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._dataset[key]
        except OSError as e:  # checksum mismatch, a gzip stream that does not inflate, a truncated file
            raise _corrupt(self._path, self._name, e) from e

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[()], dtype=dtype)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getattr__(self, name: str) -> Any:  # shape, dtype, ndim, asstr, ... of the h5py dataset
        return getattr(self._dataset, name)


def write_artifact(
    path: str | os.PathLike,
    *,
    stage: str,
    image_list_digest: str,
    params: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray | Csr],
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write an artifact atomically: temp file in the same folder, validate after reopening, then rename."""
    path = Path(path)
    with atomic_path(path) as tmp, _dealloc_errors() as errors:
        expected: dict[str, tuple[int, ...]] = {}
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["stage"] = stage
            f.attrs["image_list_digest"] = image_list_digest
            f.attrs["image_digest_version"] = IMAGE_DIGEST_VERSION
            f.attrs["params_digest"] = digest_params(params)
            f.attrs["params"] = _json_attr(dict(params))
            f.attrs["orl_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for key, value in (attrs or {}).items():
                if key in _RESERVED:
                    raise ValueError(f"attribute name {key!r} is reserved")
                f.attrs[key] = _json_attr(value)
            for name, data in arrays.items():
                if isinstance(data, Csr):
                    g = f.create_group(name)
                    g.attrs["kind"] = _CSR_MARK
                    _write_array(g, "values", data.values)
                    _write_array(g, "offsets", data.offsets)
                    expected[f"{name}/values"] = data.values.shape
                    expected[f"{name}/offsets"] = data.offsets.shape
                else:
                    _write_array(f, name, data)
                    expected[name] = np.asarray(data).shape
            f.flush()
        if errors:
            raise errors[0]
        _validate(tmp, stage, image_list_digest, expected)
    return path


@contextlib.contextmanager
def _dealloc_errors() -> Iterator[list[BaseException]]:
    """Collect the errors h5py raises in destructors: a write that fails when a dataset closes (disk full) is
    otherwise only printed (a traceback through sys.excepthook, then 'Exception ignored') and looks successful."""
    errors: list[BaseException] = []
    previous, previous_excepthook = sys.unraisablehook, sys.excepthook

    def hook(unraisable: Any) -> None:
        if "h5py" in str(unraisable.object) and unraisable.exc_value is not None:
            errors.append(unraisable.exc_value)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    sys.excepthook = lambda _type, value, _tb: errors.append(value)  # only destructors print while we write
    try:
        yield errors
    finally:
        sys.unraisablehook, sys.excepthook = previous, previous_excepthook


def _validate(tmp: Path, stage: str, digest: str, expected: Mapping[str, tuple[int, ...]]) -> None:
    with h5py.File(tmp, "r") as f:
        if _from_attr(f.attrs["stage"]) != stage or _from_attr(f.attrs["image_list_digest"]) != digest:
            raise ArtifactError(f"{tmp}: attributes did not survive the write")
        for name, shape in expected.items():
            if name not in f or f[name].shape != shape:
                raise ArtifactError(f"{tmp}: dataset {name} did not survive the write")


class Artifact:
    """A read-only view of one artifact; datasets are read on demand, so it is cheap to open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: artifact not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise ArtifactError(f"{self.path}: not a readable HDF5 artifact ({e})") from e
        self.attrs: dict[str, Any] = {k: _from_attr(v) for k, v in self._file.attrs.items()}
        for key in ("format_version", "stage", "image_list_digest"):
            if key not in self.attrs:
                self.close()
                raise ArtifactError(f"{self.path}: not an orl artifact (attribute {key!r} missing)")
        if self.attrs["format_version"] != FORMAT_VERSION:
            version = self.attrs["format_version"]
            self.close()
            raise ArtifactError(
                f"{self.path}: format version {version}, this orl reads version {FORMAT_VERSION}; rerun the stage"
            )

    @property
    def stage(self) -> str:
        """The stage that wrote the artifact."""
        return self.attrs["stage"]

    @property
    def image_list_digest(self) -> str:
        """Digest of the image list this artifact is indexed by."""
        return self.attrs["image_list_digest"]

    @property
    def params(self) -> dict[str, Any]:
        """The parameters the stage ran with."""
        return self.attrs.get("params", {})

    def names(self) -> list[str]:
        """Top-level dataset and CSR group names."""
        return list(self._file.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def array(self, name: str) -> np.ndarray:
        """Load a whole dataset into memory (strings come back as str objects)."""
        ds = self._dataset(name)
        if h5py.check_string_dtype(ds.dtype) is not None:
            return np.array(CheckedDataset(ds.asstr(), self.path, name)[()], dtype=object)
        return CheckedDataset(ds, self.path)[()]

    def dataset(self, name: str) -> CheckedDataset:
        """The lazy dataset, for slicing large arrays without loading them (damaged reads name the file)."""
        return CheckedDataset(self._dataset(name), self.path)

    def csr(self, name: str) -> Csr:
        """Load a whole CSR group."""
        g = self._csr_group(name)
        return Csr(CheckedDataset(g["values"], self.path)[()], CheckedDataset(g["offsets"], self.path)[()])

    def csr_row(self, name: str, i: int) -> np.ndarray:
        """Read one CSR row without loading the rest."""
        g = self._csr_group(name)
        start, stop = CheckedDataset(g["offsets"], self.path)[i : i + 2]
        return CheckedDataset(g["values"], self.path)[start:stop]

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self._file or not isinstance(self._file[name], h5py.Dataset):
            raise ArtifactError(f"{self.path}: no dataset {name!r} (has {self.names()})")
        return self._file[name]

    def _csr_group(self, name: str) -> h5py.Group:
        g = self._file.get(name)
        if not isinstance(g, h5py.Group) or _from_attr(g.attrs.get("kind")) != _CSR_MARK:
            raise ArtifactError(f"{self.path}: no CSR group {name!r} (has {self.names()})")
        return g

    def close(self) -> None:
        """Close the underlying file."""
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_artifact(
    path: str | os.PathLike,
    *,
    stage: str | None = None,
    like: Artifact | str | os.PathLike | None = None,
) -> Artifact:
    """Open an artifact, check its stage, and refuse it unless it indexes the same image list as `like`."""
    art = Artifact(path)
    if stage is not None and art.stage != stage:
        art.close()
        raise ArtifactError(f"{art.path}: written by stage {art.stage!r}, expected {stage!r}")
    if like is not None:
        check_same_images(art, like)
    return art


def check_same_images(art: Artifact, like: Artifact | str | os.PathLike) -> None:
    """Raise ArtifactError naming both files when two artifacts index different image lists."""
    if isinstance(like, Artifact):
        ref_path, ref_digest, ref_version = like.path, like.image_list_digest, like.attrs.get("image_digest_version")
    else:
        with Artifact(like) as ref:
            ref_path, ref_digest = ref.path, ref.image_list_digest
            ref_version = ref.attrs.get("image_digest_version")
    if art.image_list_digest == ref_digest:
        return
    for old, other, version in ((art.path, ref_path, art.attrs.get("image_digest_version")), (ref_path, art.path, ref_version)):
        if version != IMAGE_DIGEST_VERSION:
            raise ArtifactError(
                f"{old} was made by an older orl whose image-list digest covered only image names and sizes, so it "
                f"cannot be checked against {other}; rerun the index and every later stage "
                "(Snakemake: `snakemake --forcerun index_images`)"
            )
    raise ArtifactError(
        f"{art.path} was made from image list {art.image_list_digest} but {ref_path} indexes image list "
        f"{ref_digest}: the two files disagree on which images they describe; rerun the stage that made "
        f"{art.path.name} from the current image index"
    )


def check_no_self_neighbors(path: str | os.PathLike, neighbors: np.ndarray) -> None:
    """Refuse an (N, K) neighbour table in which an image lists itself (a kNN that did not exclude the query)."""
    rows = np.nonzero((neighbors == np.arange(len(neighbors))[:, None]).any(axis=1))[0]
    if len(rows):
        raise ArtifactError(f"{path}: {len(rows)} image(s) list themselves as a neighbour (e.g. image {rows[0]}); "
                            "rerun orl knn")


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of an artifact (cheap; used by stages and tests to inspect provenance)."""
    with Artifact(path) as art:
        return dict(art.attrs)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write `obj` as JSON the way artifacts are written: temp file in the same folder, fsync, then rename."""
    return atomic_write(Path(path), lambda f: f.write(json.dumps(obj, indent=indent) + "\n"), mode="w")
