"""Long-polls that hold no thread: a condition variable that asyncio tasks can wait on too.

The coordinator's state lives behind a lock and changes in threads (the study driver, uploads);
a long-polling site used to wait on a :class:`threading.Condition` in a request thread of its
own, so a few dozen polls took every thread the server had. :class:`ChangeNotifier` is that
condition with one addition: every :meth:`~ChangeNotifier.notify_all` also wakes the asyncio
tasks awaiting :meth:`~ChangeNotifier.changed`, from whatever thread it runs in. A poll then
costs a coroutine while it waits and a thread only for the moment it looks for its message.

Changes are counted (:attr:`~ChangeNotifier.version`): a poll reads the count, looks for its
message, and waits only if the count is still the one it read, so no change slips between the
look and the wait.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["ChangeNotifier"]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ChangeNotifier(threading.Condition):
    """A :class:`threading.Condition` whose ``notify_all`` also wakes asyncio waiters.

    Parameters
    ----------
    lock
        The lock that guards the state whose changes are announced.
    """

    def __init__(self, lock: threading.RLock | threading.Lock | None = None) -> None:
        super().__init__(lock)
        #: How many changes were announced so far.
        self.version = 0
        #: Set by :meth:`close`: no change will come any more (the service stops).
        self.closed = False
        self._tasks_guard = threading.Lock()
        self._tasks: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def notify_all(self) -> None:
        """Wake every thread in :meth:`wait` and every task in :meth:`changed`."""
        super().notify_all()
        with self._tasks_guard:
            self.version += 1
            waiters, self._tasks = self._tasks, set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop is closed: nobody is left to wake
                continue

    def close(self) -> None:
        """Announce the last change: waiters return and should stop waiting."""
        with self:
            self.closed = True
            self.notify_all()

    async def changed(self, since: int, timeout_s: float) -> None:
        """Return once :attr:`version` differs from ``since``, or after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._tasks_guard:
            if self.version != since or self.closed:
                return
            self._tasks.add(entry)
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            pass
        finally:
            with self._tasks_guard:
                self._tasks.discard(entry)
