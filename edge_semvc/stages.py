"""The pipeline's threads: each stage runs a step over its upstream in its own thread, a few
items ahead of its consumer (pipeline.py: decoding, understanding, then encoding in the
caller's thread)."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator


def timed(items: Iterator, timings: list[float]) -> Iterator:
    """Yield from `items`, recording how long each item took to produce (ms)."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        timings.append((time.perf_counter() - t0) * 1e3)
        yield item


class Stage:
    """Runs `step` over `upstream` in its own thread, a few items ahead of the consumer.

    Decoding, understanding (labeler, analysis, map) and encoding overlap this way: PyAV,
    ONNX Runtime and x264 all release the GIL. The upstream's exceptions reach the consumer.
    """

    _END = object()

    def __init__(self, upstream: Iterable, step: Callable | None, name: str, depth: int = 4):
        self.q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(upstream, step), daemon=True,
                                       name=name)
        self.thread.start()

    def _run(self, upstream: Iterable, step: Callable | None) -> None:
        try:
            for item in upstream:
                if self._stop.is_set():
                    return
                self._put(step(item) if step else item)
        except BaseException as e:  # handed to the consumer, which decides
            self._put(e)
        self._put(self._END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while not self._stop.is_set():
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
