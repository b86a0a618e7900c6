"""Data loading that overlaps compute: a thread fills a small queue with the next batches.

The loader runs in a background thread (its work, decoding and augmenting in DALI, torch or
numpy, releases the GIL) while the main thread trains on the current batch. On a GPU the thread
also pins the batch's memory, so the copy to the device is asynchronous. Views are keyed per
sample, so prefetching changes no value; the loader's position runs ahead of the training step,
which is why the engine derives the data position it checkpoints from the step count.
"""

from __future__ import annotations

import queue
import threading
import time

import torch

_END = object()


class Prefetcher:
    """Iterates ``loader`` (one epoch) ``depth`` batches ahead of the consumer."""

    def __init__(self, loader, *, device: torch.device, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._device = device
        self._thread = threading.Thread(target=self._fill, args=(loader,), name="fmicl-prefetch", daemon=True)
        self._thread.start()

    def _fill(self, loader) -> None:
        try:
            if self._device.type == "cuda":  # the current device is per thread (a GPU loader reads it)
                torch.cuda.set_device(self._device)
            for batch in loader:
                if self._device.type == "cuda":
                    batch = tuple(t.pin_memory() if t.device.type == "cpu" else t for t in batch)
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as err:  # the consumer re-raises it, in the main thread
            self._put(err)

    def _put(self, item) -> bool:
        """Queue ``item`` unless the consumer has closed; False if it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self):
        """(batch or None at the epoch's end, seconds waited for it)."""
        started = time.perf_counter()
        item = self._queue.get()
        waited = time.perf_counter() - started
        if item is _END:
            return None, waited
        if isinstance(item, BaseException):
            raise item
        return item, waited

    def close(self) -> None:
        """Stops the thread (when the epoch is left early: max_steps, a stop request, an error)."""
        self._stop.set()
        self._thread.join(timeout=60)
