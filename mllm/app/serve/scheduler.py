"""The batching worker: a bounded queue of requests and one thread that runs them in batches.

    scheduler = Scheduler(model, max_batch_size=8, batch_wait_s=0.005, max_queue=64)
    scheduler.start()
    job = Job(gen_request, loop=asyncio.get_running_loop(), stream=True)
    scheduler.submit(job)             # raises QueueFull when max_queue requests are already waiting
    event = await job.events.get()    # ("delta", text) ... then ("done", GenResult) or ("error", message)
    job.cancel()                      # client gone / timed out: its row stops at the next step
    scheduler.stop()

The worker takes the first waiting request, then keeps collecting for ``batch_wait_s`` (or until
``max_batch_size``) so that requests arriving together share their forward passes, and runs them with
``generate_batch``. A batch runs to its end; requests arriving meanwhile form the next batch. Requests
cancelled while waiting are dropped without compute. An exception in a batch is reported to its requests
and the worker goes on; a batch that failed before producing any token is retried one request at a time,
so one bad request cannot fail the others.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from typing import Any, List, Optional

from .adapter import ServedModel
from .batching import GenRequest, generate_batch

log = logging.getLogger("mllm.app.serve")


class QueueFull(Exception):
    """``max_queue`` requests are already waiting."""


class Job:
    """One request on its way through the worker; events go back to the event loop that made it."""

    def __init__(self, request: GenRequest, loop: asyncio.AbstractEventLoop, stream: bool = False):
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.result = None  # the GenResult, once done
        self.submitted = time.monotonic()
        self.started: Optional[float] = None
        self.streamed = False  # some text went out already (set on the worker thread)
        if stream:
            request.on_delta = self._on_delta

    def _on_delta(self, text: str) -> None:
        self.streamed = True
        self.emit("delta", text)

    def cancel(self) -> None:
        self.request.cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled.is_set()

    def emit(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down, nobody is listening
            pass


class Scheduler:
    def __init__(self, model: ServedModel, *, max_batch_size: int = 8, batch_wait_s: float = 0.005,
                 max_queue: int = 64):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be >= 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.queue: "queue.Queue[Optional[Job]]" = queue.Queue(maxsize=max_queue)
        self.batch_sizes: Counter = Counter()  # batch size -> how many batches ran with it
        self.finished: Counter = Counter()  # finish reason -> count
        self.completed: List[Any] = []  # the last GenResults (most recent last), for inspection
        self.busy = False
        self._running: List[Job] = []  # the batch being generated
        self._thread: Optional[threading.Thread] = None

    # ---- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mllm-serve-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        while True:  # cancel what waits so the worker reaches the sentinel quickly
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.emit("error", "the server is shutting down")
        for job in list(self._running):  # the running batch stops at its next token
            job.cancel()
        self.queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} requests are already waiting") from None

    @property
    def waiting(self) -> int:
        return self.queue.qsize()

    # ---- the worker ---------------------------------------------------------------------------------------
    def _collect(self, first: Job) -> List[Job]:
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop() was called: finish this batch, then leave
                self.queue.put(None)
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [j for j in self._collect(first) if not self._drop_cancelled(j)]
            if not batch:
                continue
            self.busy, self._running = True, batch
            try:
                self._run_batch(batch)
            finally:
                self.busy, self._running = False, []

    def _drop_cancelled(self, job: Job) -> bool:
        if job.cancelled:
            self.finished["cancelled"] += 1
            job.emit("error", "cancelled before it started")
            return True
        return False

    def _run_batch(self, batch: List[Job]) -> None:
        now = time.monotonic()
        for job in batch:
            job.started = now
        try:
            results = generate_batch(self.model, [j.request for j in batch])
        except Exception as e:  # noqa: BLE001 - a failing batch must not end the worker
            if len(batch) > 1 and not any(j.streamed for j in batch):
                log.warning("a batch of %d failed (%s: %s); running its requests one by one",
                            len(batch), type(e).__name__, e)
                for job in batch:
                    self._run_batch([job])
                return
            log.exception("generation failed")
            for job in batch:
                job.emit("error", f"generation failed: {type(e).__name__}: {e}")
            return
        self.batch_sizes[len(batch)] += 1
        for job, result in zip(batch, results):
            job.result = result
            self.finished[result.finish_reason] += 1
            self.completed = (self.completed + [result])[-256:]
            job.emit("done", result)
