"""Stop requests: SIGTERM, SIGUSR1 (what schedulers send before preemption) and SIGINT (Ctrl-C).

The handler only records the request; the loop acts on it at the next step boundary, where the
model, optimiser and data position agree, by writing a checkpoint and returning. The run then
exits 0 (SIGINT: 130), and rerunning the same command resumes it. A second SIGINT while the
checkpoint is being written interrupts at once.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """A context manager that installs the handlers and restores the previous ones on exit."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
