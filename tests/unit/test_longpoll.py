"""ChangeNotifier: one notify_all wakes both threads in ``wait`` and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
import time

from alliance.transport.longpoll import ChangeNotifier


def test_a_change_wakes_waiting_threads_and_tasks_alike() -> None:
    changes = ChangeNotifier(threading.RLock())
    woke: list[str] = []

    def thread_waits() -> None:
        with changes:
            changes.wait(10)
        woke.append("thread")

    async def tasks_wait() -> float:
        seen = changes.version
        started = time.monotonic()
        notifier = threading.Timer(
            0.2, lambda: (changes.acquire(), changes.notify_all(), changes.release())
        )
        notifier.start()
        await asyncio.gather(*(changes.changed(seen, 10) for _ in range(50)))
        notifier.join()
        return time.monotonic() - started

    waiter = threading.Thread(target=thread_waits)
    waiter.start()
    time.sleep(0.1)
    took = asyncio.run(tasks_wait())
    waiter.join(5)
    assert woke == ["thread"]
    assert took < 5
    assert changes.version == 1


def test_a_change_before_the_wait_is_not_missed_and_close_ends_waits() -> None:
    changes = ChangeNotifier()
    seen = changes.version
    with changes:
        changes.notify_all()

    async def waits() -> float:
        started = time.monotonic()
        await changes.changed(seen, 10)  # already changed: returns at once
        changes.close()
        await changes.changed(changes.version, 10)  # closed: returns at once
        return time.monotonic() - started

    assert asyncio.run(waits()) < 1
    assert changes.closed


def test_without_a_change_a_wait_ends_at_its_timeout() -> None:
    changes = ChangeNotifier()
    started = time.monotonic()
    asyncio.run(changes.changed(changes.version, 0.2))
    assert 0.15 < time.monotonic() - started < 5
