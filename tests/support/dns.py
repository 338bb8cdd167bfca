"""A real DNS server on loopback (dnslib), answering over UDP and TCP on the same port.

Each test gives it the zone it needs:

    server = DnsServer()
    server.add("mx.test", "MX", "10 mail.mx.test.")
    server.add("mail.mx.test", "A", "127.0.0.1")
    server.servfail("broken.test")      # SERVFAIL
    server.timeout("slow.test")         # never answers
    server.truncate("big.test")         # UDP answers truncated: the client must retry on TCP
    with server:                        # or start() / stop()
        ... server.address ...          # (host, port), for `dns.servers`

A name with records answers them (NOERROR, maybe empty for another type:
"no such record"); a name with none is NXDOMAIN. `queries` records what was
asked, with the transport. Threads serve it, so it answers whatever the test's
event loop is doing.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSError, DNSRecord
from dnslib.server import DNSLogger, DNSServer

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Query:
    name: str  # lower case, no trailing dot
    qtype: str  # "A", "MX", ...
    transport: str  # "udp" or "tcp"


@dataclass
class DnsServer:
    host: str = HOST
    records: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    truncated: set[str] = field(default_factory=set)
    queries: list[Query] = field(default_factory=list)
    port: int = 0
    _servers: list[DNSServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the zone -------------------------------------------------------------------

    def add(self, name: str, qtype: str, value: str, ttl: int = 60) -> None:
        """One record, in zone-file syntax for its value ("10 mx.test." for MX)."""
        with self._lock:
            self.records.setdefault(_key(name), []).append((qtype.upper(), value, ttl))

    def servfail(self, name: str) -> None:
        self.failing.add(_key(name))

    def timeout(self, name: str) -> None:
        self.silent.add(_key(name))

    def truncate(self, name: str) -> None:
        self.truncated.add(_key(name))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def asked(self, name: str) -> list[Query]:
        with self._lock:
            return [q for q in self.queries if q.name == _key(name)]

    # --- serving --------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(20):  # a UDP port whose TCP twin is free too
            udp = self._server(0, tcp=False)
            port = int(udp.server.server_address[1])
            try:
                tcp = self._server(port, tcp=True)
            except OSError:
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                server.start_thread()
            return
        raise OSError("no port free for both UDP and TCP")

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers.clear()

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _server(self, port: int, tcp: bool) -> DNSServer:
        server = DNSServer(
            _Resolver(self),
            port=port,
            address=self.host,
            tcp=tcp,
            logger=DNSLogger("-request,-reply,-truncated,-error", prefix=False, logf=_quiet),
        )
        server.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return server

    def answer(self, request: DNSRecord, transport: str) -> DNSRecord:
        name = _key(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append(Query(name, qtype, transport))
            records = list(self.records.get(name, ()))
        if name in self.silent:
            raise DNSError(f"{name}: no answer (a time-out for the client)")
        reply = request.reply()
        if name in self.failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if not records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, value, ttl in records:
            if rtype == qtype:
                reply.add_answer(*RR.fromZone(f"{name}. {ttl} IN {rtype} {value}"))
        if transport == "udp" and name in self.truncated:
            reply.header.tc = 1
            reply.rr = []
        return reply


class _Resolver:
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        # dnslib's handler sends nothing when this raises DNSError: a time-out.
        return self._server.answer(request, handler.protocol)


def _key(name: str) -> str:
    return name.lower().rstrip(".")


def _quiet(*_: object) -> None:
    return None
