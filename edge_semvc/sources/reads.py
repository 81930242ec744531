"""A source read by one thread and closed by another: the pipeline's decode thread reads the
input, `encode` closes it once the run is over. FFmpeg's demuxer closed inside a read crashes
the process (a live input's read waits up to its read timeout for a packet), so the close
waits for the read; a read that hangs longer leaves the input to the reader, which closes it
when its read returns (as `paced.PacedSource.close` does with its camera thread)."""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()


class GuardedReads:
    """`each(items)` steps through `items` under a lock that `close(close_input)` takes."""

    def __init__(self, name: str, wait_s: float):
        self.name, self.wait_s = name, wait_s
        self._lock = threading.Lock()
        self._close: Callable[[], None] | None = None
        self._closed = self._orphaned = False

    def each(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, each taken from it under the lock; ends once the input was closed."""
        while True:
            with self._lock:
                try:
                    item = _END if self._closed or self._orphaned else next(items, _END)
                finally:
                    if self._orphaned:  # close() gave up waiting: the input is ours to close
                        self._close_now()
            if item is _END:
                return
            yield item

    def close(self, close_input: Callable[[], None]) -> None:
        """Close the input between two steps of `each` (waiting up to `wait_s` for one), else
        leave it to the reader, which closes it when its step returns."""
        self._close = close_input
        if not self._lock.acquire(timeout=self.wait_s):
            self._orphaned = True
            log.warning("%s: the input is still being read; it is closed when the read returns",
                        self.name)
            if not self._lock.acquire(blocking=False):
                return
        try:
            self._close_now()
        finally:
            self._lock.release()

    def _close_now(self) -> None:
        if not self._closed and self._close is not None:
            self._closed = True
            self._close()
