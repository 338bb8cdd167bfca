"""How many SMTP connections one client address holds, across every ingress instance.

Ingress writes one key per open connection into CONNECTIONS_BUCKET, with a
short TTL it keeps renewing (services/ingress/adapters/leases.py); the count is
the number of keys under the address, read in one stream-info request. A
crashed ingress stops renewing, and its keys expire within one TTL.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from libs.common.contract import subjects


class ConnectionCounter:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def count(self, client_ip: str) -> int:
        info = await self._js.stream_info(
            subjects.kv_stream(subjects.CONNECTIONS_BUCKET),
            subjects_filter=subjects.connection_leases_filter(client_ip),
        )
        return len(info.state.subjects or {})
