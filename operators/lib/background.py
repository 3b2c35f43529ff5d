"""Background threads (the writer's, the input's read-ahead) that yield the CPU to the model forwards."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: how much lower than the models' threads a background thread runs (Linux nice increment)
NICE_INCREMENT = 10


def lower_this_threads_priority(increment: int = NICE_INCREMENT) -> None:
    """Raise the calling thread's nice value by ``increment`` (at most 19), leaving the process's alone.

    On Linux a thread's nice value is its own (``setpriority`` on its thread id), so the models' threads
    keep theirs and the scheduler gives a busy core to a forward first. Raising one's nice value needs
    no privilege; where it is not possible (another OS) the thread simply keeps the normal priority.
    """
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + int(increment)))
    except (AttributeError, OSError):
        pass


def background_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """A thread pool whose threads run below the models' priority (:func:`lower_this_threads_priority`)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=lower_this_threads_priority)
