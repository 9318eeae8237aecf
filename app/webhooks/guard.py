"""Where a webhook may be sent: public addresses only, unless an operator allowlists a network.

Checked on every delivery after DNS resolution (a name that resolved to a public address at creation may
point at 169.254.169.254 today), and the request then goes to the address that was checked, not to a
second lookup of the name: a DNS answer that changes between the check and the connect cannot slip past.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedDestination(Exception):
    """A webhook URL that may not be called: its reason is shown in the delivery's log and the API's 422."""


@dataclass(frozen=True)
class Destination:
    url: str  # the URL with its host replaced by the checked address
    host_header: str  # what the receiver sees in Host
    sni_hostname: str | None  # for https: the name the certificate must match


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or BlockedDestination saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BlockedDestination("a webhook URL is http:// or https://")
    if not parts.hostname:
        raise BlockedDestination("a webhook URL needs a host")
    if parts.username or parts.password:
        raise BlockedDestination("a webhook URL may not carry credentials; the signature authenticates the sender")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BlockedDestination("the webhook URL's port is not a number in 1..65535") from None
    return parts.scheme, parts.hostname, port


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_address(address: IPAddress, allowed: Iterable[IPNetwork]) -> None:
    """Loopback, private, link-local (cloud metadata lives there), reserved, shared and multicast addresses
    are refused unless inside an allowed network."""
    address = _unmapped(address)
    if any(address in network for network in allowed):
        return
    if not address.is_global or address.is_multicast:
        raise BlockedDestination(
            f"{address} is not a public address (loopback, private, link-local or reserved); "
            "an operator may allow its network with FT_WEBHOOK_ALLOWED_NETWORKS"
        )


def networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise BlockedDestination(f"cannot resolve {host}: {error.strerror}") from None
    found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(found))


def checked_destination(url: str, allowed: Iterable[IPNetwork]) -> Destination:
    """Resolve ``url``'s host, check every address it resolves to, and pin the request to the first."""
    scheme, host, port = parse_url(url)
    allowed = list(allowed)
    addresses = resolve(host, port)
    for address in addresses:
        check_address(address, allowed)
    pinned = addresses[0]
    netloc = f"[{pinned}]" if pinned.version == 6 else str(pinned)
    parts = urlsplit(url)
    default_port = port == (443 if scheme == "https" else 80)
    host_header = host if default_port else f"{host}:{port}"
    if ":" in host and not default_port:
        host_header = f"[{host}]:{port}"
    elif ":" in host:
        host_header = f"[{host}]"
    target = parts._replace(netloc=f"{netloc}:{port}").geturl()
    return Destination(url=target, host_header=host_header, sni_hostname=host if scheme == "https" else None)


def check_literal(url: str, allowed: Iterable[IPNetwork]) -> None:
    """At creation: the URL's shape, and its host when it is an address (names are checked at delivery)."""
    _, host, _ = parse_url(url)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            check_address(ipaddress.ip_address("127.0.0.1"), allowed)
        return
    check_address(address, allowed)
