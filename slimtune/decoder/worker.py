"""One generation thread for `slimtune serve` over a causal LM: requests answered in turn.

A torch model keeps its KV cache in the forward pass of one request, so two requests decoding at
once on one model would need a cache each; the simple correct design is one thread taking jobs
from a bounded queue in arrival order. Each job's text goes back piece by piece through its
`emit` callback (the server hands in one that puts the event on the request's asyncio queue with
`loop.call_soon_threadsafe`), so the event loop never waits on the model. The queue is bounded:
`submit` refuses a job beyond `max_queue` (waiting + running) rather than build a backlog.

Events a job receives, in order: ("text", piece)*, then ("done", finish_reason, completion_tokens)
or ("error", message). finish_reason is "stop" (end-of-sequence id or a stop string) or "length"
(max_tokens reached).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

from .measure import Decoder, Sampling
from .pieces import StopAt, text_pieces

_STOP = object()


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class Job:
    ids: list[int]  # the prompt's token ids
    max_tokens: int
    sampling: Sampling
    stops: list[str]
    emit: Callable[[tuple], None]  # called on the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client went away


class GenerationWorker:
    def __init__(self, decoder: Decoder, max_queue: int):
        self.decoder, self.max_queue = decoder, max_queue
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self.cancelled = 0  # jobs stopped (or never started) because their client went away
        self.generated = 0  # tokens the model made, answered or not (a cancelled job's too)

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self._pending

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="slimtune-generate", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull
            self._pending += 1
        self._queue.put(job)

    def _work(self) -> None:
        while (job := self._queue.get()) is not _STOP:
            try:
                if job.cancelled.is_set():
                    self.cancelled += 1
                else:
                    self._generate(job)
            except Exception as e:  # a model failure ends this request, not the server
                job.emit(("error", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"))
            finally:
                with self._lock:
                    self._pending -= 1

    def _generate(self, job: Job) -> None:
        dec = self.decoder
        made, last = 0, None

        def tokens():
            nonlocal made, last
            for tok in dec.stream(job.ids, job.max_tokens, sampling=job.sampling):
                made, last = made + 1, tok
                self.generated += 1
                yield tok
                if job.cancelled.is_set():
                    return

        cut = StopAt(job.stops)
        for piece in text_pieces(dec.tokenizer, tokens()):
            if shown := cut.feed(piece):
                job.emit(("text", shown))
            if cut.stopped:
                break  # closes the token stream: no more tokens are generated
        if job.cancelled.is_set() and not cut.stopped and made < job.max_tokens and last not in dec.stop_ids():
            self.cancelled += 1  # the client left mid-answer: nobody reads the rest
            return
        if rest := cut.flush():
            job.emit(("text", rest))
        ended = cut.stopped or last in dec.stop_ids() or made < job.max_tokens
        job.emit(("done", "stop" if ended else "length", made))
