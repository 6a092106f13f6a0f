"""Runs the session's computations on a worker QThread, so the window never freezes.

A *job* is a callable ``job(progress, cancelled) -> result``: ``progress(done, total)`` may be
called from the worker thread (it is forwarded to the UI thread as a signal) and
``cancelled()`` says whether the user pressed Cancel. The session's propagation polls it after
every frame through the core's progress callback and, when it turns true, raises
:class:`gui.controller.PropagationCancelled` and puts the video back as it was (the core
itself has no cancel hook).

One job runs at a time; the window disables its inputs while :attr:`JobRunner.busy`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

Job = Callable[[Callable[[int, int], None], Callable[[], bool]], Any]


class _Worker(QObject):
    """Lives in the worker thread; runs one job per ``run`` call."""

    done = Signal(object, object)  # (token, result)
    failed = Signal(object, object)  # (token, exception)
    progress = Signal(int, int)

    def __init__(self, cancel_event: threading.Event):
        super().__init__()
        self._cancel = cancel_event

    @Slot(object, object)
    def run(self, token: object, job: Job) -> None:
        try:
            result = job(self.progress.emit, self._cancel.is_set)
        except BaseException as exc:  # reported to the UI thread, never lost
            exc.traceback_text = traceback.format_exc()  # type: ignore[attr-defined]
            self.failed.emit(token, exc)
            return
        self.done.emit(token, result)


class JobRunner(QObject):
    """Owns the worker thread. ``submit(job, on_done, on_error)``: the callbacks run on the UI
    thread when the job ends; ``progress`` is re-emitted on the UI thread."""

    progress = Signal(int, int)
    busy_changed = Signal(bool)
    _request = Signal(object, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._cancel = threading.Event()
        self._thread = QThread()
        self._thread.setObjectName("mivos-worker")
        self._worker = _Worker(self._cancel)
        self._worker.moveToThread(self._thread)
        self._request.connect(self._worker.run)
        self._worker.done.connect(self._on_done)
        self._worker.failed.connect(self._on_failed)
        self._worker.progress.connect(self.progress)
        self._thread.start()
        self._callbacks: dict[int, tuple[Callable[[Any], None], Callable[[BaseException], None]]] = {}
        self._next = 0
        self.busy = False

    def submit(self, job: Job, on_done: Callable[[Any], None],
               on_error: Callable[[BaseException], None]) -> None:
        if self.busy:
            raise RuntimeError("a job is already running")
        self._cancel.clear()
        self._next += 1
        self._callbacks[self._next] = (on_done, on_error)
        self._set_busy(True)
        self._request.emit(self._next, job)

    def cancel(self) -> None:
        """Ask the running job to stop (it stops at its next progress report)."""
        self._cancel.set()

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.busy_changed.emit(busy)

    @Slot(object, object)
    def _on_done(self, token: int, result: Any) -> None:
        on_done, _ = self._callbacks.pop(token)
        self._set_busy(False)
        on_done(result)

    @Slot(object, object)
    def _on_failed(self, token: int, exc: BaseException) -> None:
        _, on_error = self._callbacks.pop(token)
        self._set_busy(False)
        on_error(exc)

    def shutdown(self, timeout_ms: int = 30000) -> None:
        """Cancel what runs, stop the thread and wait for it."""
        self.cancel()
        self._thread.quit()
        self._thread.wait(timeout_ms)
