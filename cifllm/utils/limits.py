"""Run a function over many untrusted items with a per-item time limit, serially or in worker processes.

Two limits guard every item:

* a soft limit (``SIGALRM`` in the process running the item) interrupts Python code after ``time_limit_s``;
* with workers, a hard limit: a worker that has not answered after ``time_limit_s + grace`` (e.g. stuck inside a C
  extension) is killed and replaced.

Either way the item gets a failure (``timeout``), and a worker that dies (segfault, out of memory) gives its item a
``worker_crash`` failure; no item can hang or crash the caller.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

__all__ = ["ItemTimeout", "default_workers", "map_with_time_limit"]

T = TypeVar("T")
R = TypeVar("R")


class ItemTimeout(BaseException):
    """Raised by the soft limit. A ``BaseException`` so that ``except Exception`` in checked code cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise ItemTimeout()


def _run_one(fn: Callable[[Any], Any], item: Any, limit: float) -> tuple[str, Any]:
    use_alarm = limit > 0 and threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, limit)
        return "ok", fn(item)
    except ItemTimeout:
        return "timeout", f"exceeded {limit:g} s"
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _worker_main(conn: Connection, fn: Callable[[Any], Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills workers
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            idx, item, limit = msg
            conn.send((idx, _run_one(fn, item, limit)))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass


def _context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None
        self.started = 0.0
        self.deadline = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(None)
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


def map_with_time_limit(
    fn: Callable[[T], R],
    items: Sequence[T],
    time_limit_s: float | Callable[[T], float],
    workers: int = 0,
    on_failure: Callable[[T, str, str], R] | None = None,
    progress: Callable[[int], None] | None = None,
    grace_s: float = 5.0,
) -> Iterator[tuple[int, R]]:
    """Yield ``(index, fn(item))`` for every item, in completion order.

    ``time_limit_s``: seconds per item (a number, or a function of the item; <= 0 means none). ``workers`` 0 runs
    in this process (soft limit only, and only on the main thread); ``workers`` >= 1 uses that many processes (fork
    where available, so ``fn`` and the items need not be importable in a fresh interpreter). A failed item yields
    ``on_failure(item, reason, detail)`` with reason ``timeout``, ``error`` or ``worker_crash``; without
    ``on_failure`` the failure is raised as ``RuntimeError``.
    """

    def limit_of(item: T) -> float:
        return float(time_limit_s(item) if callable(time_limit_s) else time_limit_s)

    def fail(i: int, reason: str, detail: str) -> R:
        if on_failure is None:
            raise RuntimeError(f"item {i}: {reason}: {detail}")
        return on_failure(items[i], reason, detail)

    if workers <= 0:
        for i, item in enumerate(items):
            status, value = _run_one(fn, item, limit_of(item))
            yield i, (value if status == "ok" else fail(i, status, str(value)))
            if progress:
                progress(1)
        return

    ctx = _context()
    pending = list(range(len(items)))[::-1]
    pool: list[_Worker] = []
    try:
        pool = [_Worker(ctx, fn) for _ in range(min(workers, max(1, len(items))))]
        done = 0
        while done < len(items):
            for w in pool:
                if w.task is None and pending:
                    i = pending.pop()
                    lim = limit_of(items[i])
                    w.task, w.started = i, time.monotonic()
                    w.deadline = w.started + (lim + grace_s if lim > 0 else float("inf"))
                    w.conn.send((i, items[i], lim))
            busy = [w for w in pool if w.task is not None]
            if not busy:
                break
            next_deadline = min(w.deadline for w in busy)
            timeout = max(0.0, min(1.0, next_deadline - time.monotonic()))
            ready = wait([w.conn for w in busy], timeout=timeout)
            now = time.monotonic()
            for k, w in enumerate(pool):
                if w.task is None:
                    continue
                i = w.task
                if w.conn in ready:
                    try:
                        idx, (status, value) = w.conn.recv()
                    except (EOFError, OSError):
                        w.kill()
                        pool[k] = _Worker(ctx, fn)
                        yield i, fail(i, "worker_crash", f"worker exit code {w.proc.exitcode}")
                    else:
                        w.task = None
                        yield idx, (value if status == "ok" else fail(idx, status, str(value)))
                elif now > w.deadline:
                    w.kill()
                    pool[k] = _Worker(ctx, fn)
                    yield i, fail(i, "timeout", f"killed after {now - w.started:.1f} s (hard limit)")
                else:
                    continue
                done += 1
                if progress:
                    progress(1)
    finally:
        for w in pool:
            if w.task is None:
                w.stop()
            else:
                w.kill()


def default_workers() -> int:
    """Worker processes to use by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
