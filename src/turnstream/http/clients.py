"""Who the client is: its address, behind the reverse proxies the operator trusts."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from turnstream.settings import SettingsError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"
"""The client address of a request whose address cannot be known."""


def parse_networks(spec: str) -> tuple[Network, ...]:
    """``TURNSTREAM_TRUSTED_PROXIES``: comma-separated addresses or networks."""
    networks: list[Network] = []
    for part in spec.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                msg = f"TURNSTREAM_TRUSTED_PROXIES: {part.strip()!r} is not an address or network"
                raise SettingsError(msg) from None
    return tuple(networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    nearest address in ``X-Forwarded-For`` that is not a trusted proxy's (addresses a
    client wrote further left are not believed).

    It becomes a rate limit's key, so it is an IP address in its one canonical spelling
    (``::FFFF:1.2.3.4`` and ``::ffff:102:304`` are one client), or ``unknown``: a hop
    that is not an address ends the walk there, and is no key of anyone's choosing.
    """
    address = _canonical(peer)
    if not trusted or forwarded_for is None or not _trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = _canonical(hop)
        if not _trusted(address, trusted):
            break
    return address


def _canonical(address: str | None) -> str:
    try:
        return str(ipaddress.ip_address(address or ""))
    except ValueError:
        return UNKNOWN


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
