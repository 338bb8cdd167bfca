"""Password checks off the event loop, on a bounded pool of threads.

One argon2id verification takes tens of milliseconds of CPU and 64 MiB of
memory by default: on the loop it would stall every other policy answer, and
on an unbounded pool a burst of logins would allocate without limit. So the
checks queue for as many threads as there are cores.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from libs.common.mail.userhash import verify_password


class PasswordChecker:
    def __init__(self, threads: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="argon2"
        )

    async def verify(self, encoded: str | None, password: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, verify_password, encoded, password)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
