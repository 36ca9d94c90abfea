"""One model, requests served in turn: a worker thread that owns the :class:`~dca.assistant.Assistant` and a bounded
queue of jobs in front of it.

The model is not thread-safe and a 2-core CPU gains nothing from running two generations at once, so, as
llama-server with one slot and Ollama with ``OLLAMA_NUM_PARALLEL=1``, the server runs one job at a time and keeps
at most ``queue_size`` waiting; a request that finds the queue full is refused (503 with Retry-After) instead of
waiting unboundedly. A job streams its events back to the request's event loop; cancelling it (the client went
away) stops its generation at the next token, or drops it unstarted.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Emit = Callable[[Any], None]


class QueueFull(Exception):
    """The queue holds ``queue_size`` waiting jobs; ``retry_after`` (seconds) estimates when a place frees."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class Job:
    """A unit of work for the worker: ``work(emit, cancelled)`` runs on the worker thread; what it passes to
    ``emit`` and then its result (``("done", result)``) or exception (``("error", exc)``) arrive in ``events``,
    an :class:`asyncio.Queue` of the loop that created the job."""

    def __init__(self, work: Callable[[Emit, Callable[[], bool]], Any]):
        self.work = work
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.started = threading.Event()
        self.finished = threading.Event()

    def emit(self, item) -> None:
        """Hand ``item`` to the job's event loop (callable from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            pass

    def cancel(self) -> None:
        """Stop the job: its generation ends at the next token, or it never starts."""
        self.cancelled.set()


class ServerClosing(Exception):
    """The server shut down before the job ran."""


class Engine:
    """The worker thread and its queue.

    Args:
        queue_size: jobs that may wait while one runs (>= 1); one more is refused with :class:`QueueFull`. A
            waiting job whose client left (cancelled) frees its place at once.
    """

    def __init__(self, queue_size: int = 16):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._durations: deque[float] = deque(maxlen=16)
        self.running: Job | None = None
        self.served = 0
        self._thread = threading.Thread(target=self._run, name="dca-serve-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Jobs waiting (not cancelled), not counting the running one."""
        with self._cond:
            return sum(not j.cancelled.is_set() for j in self._jobs)

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely to free: the mean duration of recent jobs (1 s before any)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean))

    def submit(self, job: Job) -> Job:
        """Queue ``job``.

        Raises:
            QueueFull: ``queue_size`` live jobs are already waiting.
            ServerClosing: the engine is closed.
        """
        with self._cond:
            if self._closing:
                raise ServerClosing("the server is shutting down")
            self._jobs = deque(j for j in self._jobs if not j.cancelled.is_set())  # clients that left
            if len(self._jobs) >= self.queue_size:
                raise QueueFull(self.retry_after())
            self._jobs.append(job)
            self._cond.notify()
        return job

    def _next(self) -> Job | None:
        with self._cond:
            while True:
                while self._jobs:
                    job = self._jobs.popleft()
                    if not job.cancelled.is_set():
                        self.running = job
                        return job
                    job.finished.set()
                if self._closing:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while (job := self._next()) is not None:
            job.started.set()
            t0 = time.monotonic()
            try:
                result = job.work(job.emit, job.cancelled.is_set)
            except BaseException as e:  # noqa: BLE001 - handed to the request, which answers with an error
                job.emit(("error", e))
            else:
                job.emit(("done", result))
            finally:
                self._durations.append(time.monotonic() - t0)
                self.running = None
                self.served += 1
                job.finished.set()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running job, fail the waiting ones (their requests get an error), and stop the worker."""
        with self._cond:
            self._closing = True
            dropped, self._jobs = list(self._jobs), deque()
            if self.running is not None:
                self.running.cancel()
            self._cond.notify_all()
        for job in dropped:
            job.cancel()
            job.emit(("error", ServerClosing("the server shut down before this request was answered")))
            job.finished.set()
        self._thread.join(timeout)
