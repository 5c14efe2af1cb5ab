"""The model's thread: every torch op of the chat model runs on it, in order (chatapp/model.py says why)."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future


class ModelThread:
    """One daemon thread running submitted calls in order. Not a ThreadPoolExecutor: its workers are not
    daemons, so quitting the app mid-answer would wait for the whole generation to finish."""

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="chatapp-model", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self._calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
