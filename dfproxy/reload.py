"""Live reload: watch the config files and reload on change or SIGHUP.

The watcher polls the files' size and modification time once a second (no inotify
dependency; config folders are small). A change is acted on once it has been stable for one
poll, so an editor's save-in-several-writes is read once, whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence

log = logging.getLogger("dfproxy.reload")

POLL_INTERVAL = 1.0

Signature = tuple[tuple[str, int, int], ...]


def signature(paths: Sequence[str]) -> Signature:
    """(path, size, mtime_ns) of every config file under ``paths``; missing ones count too."""
    out: list[tuple[str, int, int]] = []
    for p in paths:
        names = [p]
        if os.path.isdir(p):
            names = [
                os.path.join(p, n)
                for n in sorted(os.listdir(p))
                if n.endswith((".yaml", ".yml")) and not n.startswith(".")
            ]
        for name in names:
            try:
                st = os.stat(name)
            except OSError:
                out.append((name, -1, -1))
            else:
                out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ConfigWatcher:
    """Calls ``on_change()`` when the files under ``paths`` change."""

    def __init__(
        self,
        paths: Sequence[str],
        on_change: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.paths = list(paths)
        self.on_change = on_change
        self.loop = loop
        self.interval = interval
        self.current = signature(self.paths)
        self.pending: Signature | None = None
        self.timer: asyncio.TimerHandle | None = loop.call_later(interval, self._poll)

    def _poll(self) -> None:
        now = signature(self.paths)
        if now != self.current:
            if now == self.pending:
                # Unchanged for a whole interval: the write is finished.
                self.current = now
                self.pending = None
                log.info("configuration files changed; reloading")
                self.on_change()
            else:
                self.pending = now
        else:
            self.pending = None
        self.timer = self.loop.call_later(self.interval, self._poll)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
