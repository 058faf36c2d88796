"""Dynamic micro-batching for the server: a bounded queue of texts and worker threads.

Requests put their texts on one queue; a worker thread takes the first waiting text, gathers
more for up to `max_wait_ms` or until it holds `max_batch` texts, runs them through the
predictor (grouped by task) and hands each text its answer back on the event loop. Inference
never runs on the event loop, and the queue is bounded: `submit` refuses texts beyond
`max_queue` instead of building a backlog (the server answers 503).

Batch invariance. A graph with dynamic int8 activations (ONNX Runtime `DynamicQuantizeLinear`,
torch `quantize_dynamic`) computes one activation scale over the whole padded batch, so a text's
logits depend on its batch-mates. Such a model (`per_row`) runs one text per call: the worker
takes texts one at a time and answers each as soon as it is done.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from .measure.predictors import Predictor

_STOP = object()


class QueueFull(Exception):
    """More texts are waiting than the queue holds."""


@dataclass
class Answer:
    probabilities: np.ndarray  # (num_labels,) float32
    tokens: int | None  # token count before truncation, when the text was longer than max_length


@dataclass
class _Item:
    text: str
    task: str
    future: asyncio.Future


def dynamic_activations(pred: Predictor) -> bool:
    """True if the model quantizes activations per call (its outputs depend on batch-mates)."""
    if pred.kind == "onnx":
        import onnx

        graph = onnx.load(str(pred.path), load_external_data=False).graph
        return any(n.op_type.startswith("DynamicQuantize") for n in graph.node)
    model = getattr(pred, "model", None)
    return model is not None and any(hasattr(m, "_packed_params") for m in model.modules())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Batcher:
    """Gathers queued texts into batches and runs them on `workers` threads.

    `predictors` maps a task name to its predictor; `per_row` maps it to whether that model's
    batches must run one text per call. `on_batch(n_texts, seconds)` is called after each batch.
    """

    def __init__(self, predictors: dict[str, Predictor], per_row: dict[str, bool], max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, workers: int = 1, on_batch=None):
        self.predictors = predictors
        self.per_row = per_row
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.workers = workers
        self.on_batch = on_batch or (lambda n, s: None)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # texts submitted and not yet answered
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        return self._pending

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for i in range(self.workers):
            # One tokenizer per thread: a fast tokenizer mutates its padding/truncation state on
            # every call and raises "Already borrowed" when two threads share it.
            own = {}
            for task, pred in self.predictors.items():
                clone = copy.copy(pred) if self.workers > 1 else pred
                if self.workers > 1:
                    clone.tokenizer = copy.deepcopy(pred.tokenizer)
                own[task] = clone
            t = threading.Thread(target=self._work, args=(own,), name=f"slimtune-infer-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then end the workers."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def submit(self, texts: list[str], task: str) -> list[asyncio.Future]:
        """Queue `texts` (all or none); their futures resolve to `Answer`s on the event loop."""
        with self._lock:
            if self._pending + len(texts) > self.max_queue:
                raise QueueFull
            self._pending += len(texts)
        futures = [self._loop.create_future() for _ in texts]
        for text, fut in zip(texts, futures):
            self._queue.put(_Item(text, task, fut))
        return futures

    # -- worker side -------------------------------------------------------------------------

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """`first` plus what arrives within the wait bound (up to max_batch); True if told to stop."""
        batch = [first]
        if self.per_row.get(first.task):
            # Gathering buys such a model nothing (each text runs alone anyway) and costs: every
            # answer of a gathered batch would wait for the batch's last row (measured: 20% fewer
            # texts/s at 32 clients than one text at a time).
            return batch, False
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self, predictors: dict[str, Predictor]) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)
            start = time.perf_counter()
            results = []
            for task in dict.fromkeys(item.task for item in batch):  # tasks in arrival order
                items = [item for item in batch if item.task == task]
                try:
                    answers = self._run(predictors[task], [i.text for i in items], self.per_row[task])
                    results += [(i.future, a, None) for i, a in zip(items, answers)]
                except Exception as e:  # a model failure answers its requests with 500, the server stays up
                    results += [(i.future, None, e) for i in items]
            with self._lock:
                self._pending -= len(batch)
            self.on_batch(len(batch), time.perf_counter() - start)
            self._loop.call_soon_threadsafe(_resolve, results)

    @staticmethod
    def _run(pred: Predictor, texts: list[str], per_row: bool) -> list[Answer]:
        # one tokenization per text: the encoding that feeds the model also says which texts were cut
        if per_row:
            rows = [pred.logits_and_tokens([t]) for t in texts]
            logits, tokens = np.concatenate([r[0] for r in rows]), [r[1][0] for r in rows]
        else:
            logits, tokens = pred.logits_and_tokens(texts)
        return [Answer(p, n) for p, n in zip(softmax(logits), tokens)]


def _resolve(results) -> None:
    for fut, answer, error in results:
        if fut.done():  # the request went away
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(answer)
