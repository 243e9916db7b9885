"""A queue of long jobs (renders, pulls) run one at a time on a worker thread.

A request made while another job runs is queued, never dropped; the page polls a job
for its position, progress and result. This is the studio's one boundary for foreign
errors: a job that fails with a cones2 error keeps that line, anything else becomes
one line naming the exception (the traceback goes to the server's log only).
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Cones2Error

Progress = Callable[[int, int, str], None]


def one_line(exc: BaseException) -> str:
    """What the page shows for ``exc``: cones2's own message, or the exception's first line."""
    if isinstance(exc, Cones2Error):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"internal error: {type(exc).__name__}" + (f": {first}" if first else "")


@dataclass
class Job:
    id: int
    kind: str
    title: str
    work: Callable[[Progress], Any] = field(repr=False)
    status: str = "queued"  # queued, running, done, error
    step: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_dict(self, position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "title": self.title, "status": self.status, "step": self.step,
            "total": self.total, "message": self.message, "error": self.error, "result": self.result,
            "position": position,
        }


class JobQueue:
    """First in, first out; one worker thread; finished jobs are kept for the page to read."""

    def __init__(self, keep: int = 200) -> None:
        self._jobs: dict[int, Job] = {}
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._order: list[int] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._keep = keep
        self._thread = threading.Thread(target=self._run, name="cones2-studio-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, title: str, work: Callable[[Progress], Any]) -> Job:
        with self._lock:
            job = Job(next(self._ids), kind, title, work)
            self._jobs[job.id] = job
            self._order.append(job.id)
            for old in self._order[: max(0, len(self._order) - self._keep)]:
                if self._jobs[old].status in ("done", "error"):
                    del self._jobs[old]
            self._order = [i for i in self._order if i in self._jobs]
        self._waiting.put(job)
        return job

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0 while running, n when n jobs are ahead of it, None when finished."""
        if job.status == "running":
            return 0
        if job.status != "queued":
            return None
        with self._lock:
            return sum(1 for i in self._order if i < job.id and self._jobs[i].status in ("queued", "running"))

    def describe(self, job: Job) -> dict[str, Any]:
        return job.to_dict(self.position(job))

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            jobs = [self._jobs[i] for i in self._order]
        return [self.describe(j) for j in jobs]

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` has finished (True) or ``timeout`` seconds passed (False)."""
        return job.ended.wait(timeout)

    def stop(self) -> None:
        self._waiting.put(None)

    def _run(self) -> None:
        while True:
            job = self._waiting.get()
            if job is None:
                return
            job.status = "running"

            def progress(step: int, total: int, message: str = "", job: Job = job) -> None:
                job.step, job.total, job.message = step, total, message

            try:
                job.result = job.work(progress)
                job.status = "done"
            except Exception as exc:  # the one boundary: every failure becomes one line
                if not isinstance(exc, Cones2Error):
                    traceback.print_exc(file=sys.stderr)
                job.error = one_line(exc)
                job.status = "error"
            job.finished = time.time()
            job.ended.set()
