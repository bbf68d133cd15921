"""Who the client is: the peer, or what trusted proxies forward."""

from __future__ import annotations

import pytest

from turnstream.http.clients import client_address, parse_networks
from turnstream.settings import SettingsError

PROXIES = parse_networks("10.0.0.0/8, 127.0.0.1")


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("203.0.113.5", None, PROXIES, "203.0.113.5"),
        # An untrusted peer's header is ignored: anyone can write it.
        ("203.0.113.5", "198.51.100.1", PROXIES, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", (), "203.0.113.5"),
        # A trusted proxy: the nearest address that is not a proxy's.
        ("127.0.0.1", "198.51.100.1", PROXIES, "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1, 10.1.2.3", PROXIES, "198.51.100.1"),
        # What the client put further left is not believed.
        ("127.0.0.1", "192.0.2.66, 198.51.100.1, 10.1.2.3", PROXIES, "198.51.100.1"),
        # Only proxies in the chain: the leftmost of them.
        ("127.0.0.1", "10.9.9.9, 10.1.2.3", PROXIES, "10.9.9.9"),
        ("127.0.0.1", "", PROXIES, "127.0.0.1"),
        # A key is an address in its canonical spelling, or "unknown", nothing else.
        ("127.0.0.1", "not-an-ip", PROXIES, "unknown"),
        ("127.0.0.1", "192.0.2.66, not-an-ip, 10.1.2.3", PROXIES, "unknown"),
        ("127.0.0.1", "198.51.100.1 x", PROXIES, "unknown"),
        ("127.0.0.1", "2001:DB8::0:1", PROXIES, "2001:db8::1"),
        ("2001:db8::0:7", None, PROXIES, "2001:db8::7"),
        ("testclient", None, PROXIES, "unknown"),
        (None, None, PROXIES, "unknown"),
    ],
)
def test_client_address(
    peer: str | None, forwarded: str | None, trusted: tuple[object, ...], client: str
) -> None:
    assert client_address(peer, forwarded, trusted) == client  # type: ignore[arg-type]


def test_trusted_proxies_parse_addresses_and_networks() -> None:
    assert [str(n) for n in parse_networks(" 10.0.0.0/8 ,::1,, 192.0.2.7")] == [
        "10.0.0.0/8",
        "::1/128",
        "192.0.2.7/32",
    ]
    with pytest.raises(SettingsError, match=r"proxy\.example"):
        parse_networks("proxy.example")
