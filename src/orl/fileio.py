"""Writing result files safely: a temp file in the target folder renamed into place, the umask's permissions, and
one-line errors that name the file and the cause (disk full, quota, read-only folder) instead of library noise.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# HDF5 reports the failing system call inside its message ("..., errno = 28, error message = '...'").
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


class WriteError(OSError):
    """A result file could not be written; the message is one line naming the file and the cause."""


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open` gives a new file: 0666 less the umask (mkstemp alone would give 0600)."""
    return 0o666 & ~current_umask()


def errno_of(exc: BaseException) -> int | None:
    """The system error number behind an exception or the exceptions it was raised from, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        if match := _HDF5_ERRNO.search(str(seen)):
            return int(match.group(1))
        recorded = getattr(seen, "orl_write_error", None)
        if recorded is not None:
            return errno_of(recorded)
        seen = seen.__cause__ or seen.__context__
    return None


def write_error(path: str | os.PathLike, exc: BaseException) -> WriteError:
    """A WriteError naming `path` and the errno behind `exc` (or the disk being full), for `raise ... from exc`."""
    code = errno_of(exc)
    folder = Path(path).parent
    if code is None:
        with contextlib.suppress(OSError):
            stat = os.statvfs(folder)
            if stat.f_bavail == 0:
                code = _errno.ENOSPC
    cause = f"{os.strerror(code)} (errno {code})" if code else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    error = WriteError(f"cannot write {path}: {cause}")
    error.errno = code
    return error


def temp_file(path: Path) -> tuple[int, Path]:
    """Create a temp file beside `path` with the umask's mode; recreates the folder if it vanished meanwhile."""
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except FileNotFoundError:  # the folder was removed between mkdir and mkstemp (Snakemake cleaning up)
            if attempt == 2:
                raise
            continue
        os.fchmod(fd, file_mode())
        return fd, Path(name)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`, on error removed.

    OSErrors (and errors raised by libraries on top of a failed write) become one WriteError naming `path`.
    """
    path = Path(path)
    try:
        fd, tmp = temp_file(path)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, WriteError) or not isinstance(e, Exception) or errno_of(e) is None:
            raise
        raise write_error(path, e) from e


def remove_stale_temps(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """Delete `.<prefix>*.tmp` files in `folder`: what a run killed mid-write (kill -9, node failure) left behind.

    Call only while holding the right to write those files (the output's lock): then no live writer owns them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(f".{prefix}") and p.name.endswith(".tmp") and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class _RecordingFile:
    """A file wrapper that remembers the OSError of a failed write (torch.save reports it only as 'unexpected pos')."""

    def __init__(self, f: IO[Any]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], mode: str = "wb") -> Path:
    """Call `write(f)` on a temp file beside `path`, fsync, then rename over `path`; WriteError names the file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": "utf-8"}
        with open(tmp, mode, **kwargs) as raw:
            f = _RecordingFile(raw)
            try:
                write(f)
                raw.flush()
            except Exception as e:
                if f.error is not None:
                    raise write_error(path, f.error) from e
                raise
    return path
