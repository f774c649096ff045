"""Background tasks that are kept referenced until done (asyncio only holds weak references)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("dfproxy.tasks")

_tasks: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def spawn(coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
    """Run ``coro`` in the background, keeping a reference until it finishes."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_done)
    return task


def cancel_all() -> list[asyncio.Task[Any]]:
    """Cancel every background task (shutdown); returns them for awaiting."""
    tasks = list(_tasks)
    for task in tasks:
        task.cancel()
    return tasks
