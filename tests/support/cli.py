"""`mailbus ...` as an operator runs it: a process of its own, from the repository root."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


async def mailbus(
    *args: str, within: float = 30.0, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of `mailbus ARGS`, fed `stdin` if given."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
