"""DataLoader worker processes that survive a scheduler's stop signal but never outlive an error.

SLURM and Ctrl-C signal the whole process group. A worker killed by that SIGTERM/SIGINT would crash the main
process before it can finish its step and save, so workers ignore both (`ignore_stop_signals`, the worker_init_fn).
The price: at interpreter exit multiprocessing stops daemonic children with SIGTERM and then joins them, and torch's
own shutdown is a no-op by then, so after an error (a worker's unreadable image, a NaN loss) the process would wait
for an ignoring worker forever. `stop_workers_on_error` therefore shuts the workers down explicitly while the error
propagates (the sentinel path, then SIGKILL for any worker still alive), so the run ends with its one-line error.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable, Iterator
from typing import Any


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker_init_fn: leave SIGTERM/SIGINT to the main process (it finishes the step and saves)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_workers(source: Iterable[Any]) -> None:
    """Shut down the worker processes of a DataLoader iterator, or of a DataLoader's persistent one, now."""
    batches = getattr(source, "_iterator", source)  # a DataLoader keeps its persistent-workers iterator there
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:
        return
    # Sentinel, join with a timeout, then SIGTERM (which our workers ignore). Called while another error
    # propagates: a failure here must not replace that error, and the SIGKILL below must still happen.
    with contextlib.suppress(Exception):
        shutdown()
    for worker in getattr(batches, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


@contextlib.contextmanager
def stop_workers_on_error(loader: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """Iterate `loader` inside the block; if anything in it raises, its workers are stopped before the error leaves."""
    batches = iter(loader)
    try:
        yield batches
    except BaseException:
        stop_workers(batches)
        raise


def worker_error_line(error: BaseException) -> str | None:
    """The worker's own one-line error ("ImageReadError: x.jpg: ...") from the traceback torch re-raises, or None."""
    text = str(error)
    if not text.startswith("Caught ") or "DataLoader worker process" not in text.split("\n", 1)[0]:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    kind, sep, message = lines[-1].partition(": ")
    if sep and kind.replace(".", "").replace("_", "").isalnum():  # "orl.data.images.ImageReadError" -> short name
        return f"{kind.rsplit('.', 1)[-1]}: {message}"
    return lines[-1]
