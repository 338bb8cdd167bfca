"""A relay-host sink for benchmarks: accepts everything, prints `<bench-id> <arrival>` per message.

Runs in its own process so its CPU is not counted as mailbus's.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time

from aiosmtpd.smtp import SMTP, Envelope, Session

_ID = re.compile(rb"^X-Bench-Id: (\S+)", re.MULTILINE)


class Handler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        found = _ID.search(data)
        ident = found.group(1).decode() if found else "-"
        sys.stdout.write(f"{ident} {time.time():.6f} {len(envelope.rcpt_tos)}\n")
        sys.stdout.flush()
        return "250 2.0.0 Ok"


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="sink.bench", ident="bench-sink"), host, port
    )
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
