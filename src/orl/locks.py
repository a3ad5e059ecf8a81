"""A lock per output: two runs (e.g. Snakemake started from two working directories on one results folder) never
write the same artifact at once. The lock is an flock on a hidden file beside the output, so it dies with the
process that holds it (kill -9 included) and never needs cleaning up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

from orl.fileio import file_mode, remove_stale_temps

# flock is not supported on some network file systems; there the run goes on unlocked, with a warning.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: `.<name>.lock` in the same folder."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of `out` for the block; OutputLockedError names the lock and its holder when it is taken."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutputLockedError(
                f"{out} is being written by another run: {path} is held by {holder}; wait for it or stop it"
            ) from None
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            warnings.warn(f"cannot lock {path} ({e.strerror}): running without protection against a second run",
                          stacklevel=3)
            yield path
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        remove_stale_temps(Path(out).parent, f"{Path(out).name}.")  # we own `out` now: its temps are leftovers
        yield path
    finally:
        os.close(fd)  # releases the flock


def output_paths(value: object) -> list[Path]:
    """An output flag's value as paths: none, one, or several (bench-semi writes one result per percent)."""
    if value is None or value == "":
        return []
    return [Path(v) for v in value] if isinstance(value, (list, tuple)) else [Path(value)]


def stage_output(args: object) -> Path | None:
    """The output a stage's parsed arguments name (--out, --out-dir or --out-csv; the first of several), if any."""
    for name in ("out", "out_dir", "out_csv"):
        paths = output_paths(getattr(args, name, None))
        if paths:
            return paths[0]
    return None
