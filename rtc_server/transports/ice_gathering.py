"""How a peer connection gathers its ICE candidates: which addresses, which UDP ports, which
public addresses it announces, how long it waits for STUN and TURN.

aioice binds every socket on a random port, announces only local addresses and waits 5 s for
STUN/TURN. A server on a cloud VM or in a container needs a firewall-friendly port range, its
1:1-NAT public address in the candidates, and an answer that is not held up by a slow TURN
server. This module replaces aioice's per-component gathering with one that does; with
:mod:`rtc_server.transports.ice` it is the only code reaching into aioice internals.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aioice import turn
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol, TransportPolicy, server_reflexive_candidate
from aiortc import RTCPeerConnection

__all__ = [
    "GatheringLog",
    "GatheringPolicy",
    "PortRangeFull",
    "bind_udp_socket",
    "ice_gatherers",
    "install_gathering",
    "public_address_map",
    "transport_chain",
]

logger = logging.getLogger(__name__)


class PortRangeFull(RuntimeError):
    """Every port of ``webrtc.udp_port_range`` is taken on an address this peer must bind."""


@dataclass(frozen=True)
class GatheringPolicy:
    """What one peer connection gathers. The defaults are aioice's own behaviour, bounded in time."""

    host_addresses: Sequence[str] | None = None  # None: every non-loopback interface
    public_addresses: Sequence[str] = ()  # "PUBLIC" (any local address) or "PUBLIC/LOCAL"
    announce_local_addresses: bool = True
    udp_port_range: tuple[int, int] | None = None
    timeout_s: float = 5.0


@dataclass
class GatheringLog:
    """What went wrong while gathering (a refused TURN allocation, an unreachable STUN server)."""

    failures: list[str] = field(default_factory=list)


def public_address_map(entries: Sequence[str], local: str) -> list[str]:
    """The public addresses that ``local`` is announced as: ``PUBLIC`` entries of its IP version,
    and ``PUBLIC/LOCAL`` entries naming it."""
    version = ipaddress.ip_address(local).version
    mapped: list[str] = []
    for entry in entries:
        public, _, only = entry.partition("/")
        if only:
            if ipaddress.ip_address(only) == ipaddress.ip_address(local):
                mapped.append(public)
        elif ipaddress.ip_address(public).version == version:
            mapped.append(public)
    return mapped


def bind_udp_socket(address: str, port_range: tuple[int, int] | None) -> socket.socket:
    """A non-blocking UDP socket bound to ``address`` on a port of ``port_range`` (any port when None).

    Starts at a random port of the range so that peers do not all probe from its bottom.
    Raises PortRangeFull when every port is taken, OSError when the address cannot be bound.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    if port_range is None:
        ports: Sequence[int] = (0,)
    else:
        low, high = port_range
        start = random.randint(low, high)
        ports = [*range(start, high + 1), *range(low, start)]
    for port in ports:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port_range is not None:
                continue
            raise
        return sock
    raise PortRangeFull(f"no free UDP port in {port_range[0]}-{port_range[1]} on {address}")  # type: ignore[index]


def install_gathering(pc: RTCPeerConnection, policy: GatheringPolicy) -> GatheringLog:
    """Make every ICE gatherer of ``pc`` gather by ``policy``. Call before setLocalDescription.

    setLocalDescription then raises PortRangeFull when the range is full (having closed what it bound).
    """
    log = GatheringLog()
    for gatherer in ice_gatherers(pc):
        connection: Connection = gatherer._connection

        async def component_candidates(
            component: int, addresses: list[str], timeout: int = 5, *, _connection: Connection = connection
        ) -> list[Candidate]:
            return await _gather(_connection, component, addresses, policy, log)

        connection.get_component_candidates = component_candidates  # type: ignore[method-assign]
    return log


def transport_chain(dtls: Any) -> list[Any]:
    """A DTLS transport, its ICE transport and that one's gatherer (any may be missing)."""
    ice = getattr(dtls, "transport", None)
    return [dtls, ice, getattr(ice, "iceGatherer", None)]


def ice_gatherers(pc: RTCPeerConnection) -> list[Any]:
    """The distinct ICE gatherers of ``pc``'s transceivers and data channel transport."""
    dtls_transports = [transceiver.sender.transport for transceiver in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_transports.append(pc.sctp.transport)
    gatherers = [transport_chain(dtls)[2] for dtls in dtls_transports]
    unique: dict[int, Any] = {id(g): g for g in gatherers if g is not None}
    return list(unique.values())


async def _gather(
    connection: Connection, component: int, addresses: list[str], policy: GatheringPolicy, log: GatheringLog
) -> list[Candidate]:
    relay_only = connection._transport_policy == TransportPolicy.RELAY
    if not relay_only and policy.host_addresses is not None:
        addresses = list(policy.host_addresses)
    # Bind every socket before the first await: a full range fails here, all or nothing.
    sockets: list[socket.socket] = []
    try:
        host_sockets: list[tuple[str, socket.socket]] = []
        for address in addresses:
            try:
                sock = bind_udp_socket(address, policy.udp_port_range)
            except PortRangeFull:
                raise
            except OSError as exc:
                logger.info("ICE: could not bind to %s: %s", address, exc)
                continue
            sockets.append(sock)
            host_sockets.append((address, sock))
        relay_socket = None
        if connection.turn_server is not None and connection.turn_transport == "udp":
            relay_socket = bind_udp_socket(_wildcard_for(connection.turn_server[0]), policy.udp_port_range)
            sockets.append(relay_socket)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise

    loop = asyncio.get_running_loop()
    candidates: list[Candidate] = []
    host_protocols: list[StunProtocol] = []
    for index, (address, sock) in enumerate(host_sockets):
        try:
            _, protocol = await loop.create_datagram_endpoint(lambda: StunProtocol(connection), sock=sock)
        except BaseException:
            for _, unused in host_sockets[index:]:
                unused.close()
            if relay_socket is not None:
                relay_socket.close()
            raise
        port = sock.getsockname()[1]
        protocol.local_candidate = _candidate("host", component, address, port)
        host_protocols.append(protocol)
        candidates.extend(_announced(component, address, port, policy))
    connection._protocols += host_protocols

    tasks: list[asyncio.Task[tuple[Candidate, StunProtocol | None]]] = []
    if connection.stun_server is not None:
        for protocol in host_protocols:
            if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                stun = server_reflexive_candidate(protocol, connection.stun_server)
                tasks.append(asyncio.create_task(stun, name="STUN binding"))
    if connection.turn_server is not None:
        relay = _relayed_candidate(connection, component, relay_socket)
        tasks.append(asyncio.create_task(relay, name="TURN allocation"))
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=policy.timeout_s)
        for task in pending:
            task.cancel()
            log.failures.append(f"{task.get_name()}: no answer within {policy.timeout_s:g} s")
        if pending:
            await asyncio.wait(pending)  # cancelled TURN allocations close their sockets...
            if relay_socket is not None:
                relay_socket.close()  # ...unless cancelled before they ran
        for task in done:
            error = task.exception()
            if error is not None:
                message = f"{task.get_name()}: {error or type(error).__name__}"
                logger.info("ICE: %s", message)
                log.failures.append(message)
                continue
            candidate, relay_protocol = task.result()
            candidates.append(candidate)
            if relay_protocol is not None:
                connection._protocols.append(relay_protocol)
    return candidates


def _announced(component: int, address: str, port: int, policy: GatheringPolicy) -> list[Candidate]:
    """The candidates a host socket is announced as: local and/or public addresses, same port."""
    public = public_address_map(policy.public_addresses, address)
    if not public:
        return [_candidate("host", component, address, port)]
    if not policy.announce_local_addresses:
        return [_candidate("host", component, p, port) for p in public]
    return [_candidate("host", component, address, port)] + [
        _candidate("srflx", component, p, port, related=(address, port)) for p in public
    ]


def _candidate(kind: str, component: int, host: str, port: int, *, related: tuple[str, int] | None = None) -> Candidate:
    return Candidate(
        foundation=candidate_foundation(kind, "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, kind),
        host=host,
        port=port,
        type=kind,
        related_address=related[0] if related else None,
        related_port=related[1] if related else None,
    )


def _wildcard_for(host: str) -> str:
    try:
        return "::" if ipaddress.ip_address(host).version == 6 else "0.0.0.0"
    except ValueError:
        return "0.0.0.0"  # a host name: aioice resolves TURN servers over IPv4 too


async def _relayed_candidate(
    connection: Connection, component: int, sock: socket.socket | None
) -> tuple[Candidate, StunProtocol]:
    """A TURN allocation; over UDP from ``sock`` (bound in the port range), over TCP/TLS as aioice does."""
    hide_related = connection._transport_policy == TransportPolicy.RELAY
    assert connection.turn_server is not None
    if sock is None:
        from aioice.ice import relayed_candidate

        return await relayed_candidate(
            component=component,
            hide_related_address=hide_related,
            protocol_factory=lambda: StunProtocol(connection),
            turn_server=connection.turn_server,
            turn_username=connection.turn_username,
            turn_password=connection.turn_password,
            turn_ssl=connection.turn_ssl,
            turn_transport=connection.turn_transport,
        )
    loop = asyncio.get_running_loop()
    inner_transport: asyncio.BaseTransport | None = None
    try:
        host, port = connection.turn_server
        infos = await loop.getaddrinfo(host, port, family=sock.family, type=socket.SOCK_DGRAM)
        sock.connect(infos[0][4])  # aioice's TURN protocol sends without an address
        server_addr = (str(infos[0][4][0]), int(infos[0][4][1]))
        inner_transport, inner_protocol = await loop.create_datagram_endpoint(
            lambda: turn.TurnClientUdpProtocol(
                server_addr,
                username=connection.turn_username,
                password=connection.turn_password,
                lifetime=turn.DEFAULT_ALLOCATION_LIFETIME,
                channel_refresh_time=turn.DEFAULT_CHANNEL_REFRESH_TIME,
            ),
            sock=sock,
        )
        protocol = StunProtocol(connection)
        relay = turn.TurnTransport(inner_protocol)
        await relay._connect(protocol)
    except BaseException:
        # On any failure, a cancellation by the gathering timeout included: the socket must not leak.
        if inner_transport is not None:
            inner_transport.close()
        else:
            sock.close()
        raise
    relayed = relay.get_extra_info("sockname")
    related = relay.get_extra_info("related_address")
    if hide_related:
        # RFC 9429 section 3.5.3: a relay-only peer must not reveal its other addresses.
        related = ("0.0.0.0", 9) if ipaddress.ip_address(relayed[0]).version == 4 else ("::", 9)
    candidate = _candidate("relay", component, relayed[0], relayed[1], related=(related[0], related[1]))
    protocol.local_candidate = candidate
    return candidate, protocol
