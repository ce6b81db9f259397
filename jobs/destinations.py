"""Webhook destinations: which addresses count as internal, and the check a URL passes at
submission and again at send time.

An address is internal when it is loopback, private, link-local, site-local, multicast, shared
(CGNAT, 100.64.0.0/10), reserved, unspecified or otherwise not globally reachable. An IPv6
address that carries an IPv4 one is judged by the IPv4 address it carries, since a translator
or tunnel on the way delivers it there: IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible
(`::/96`), SIIT-translated (`::ffff:0:0:0/96`), NAT64 (`64:ff9b::/96`, and the local-use
`64:ff9b:1::/48` of RFC 8215, whose prefix length the operator picks, so every RFC 6052 reading
of it must be public), 6to4 (`2002::/16`), Teredo (`2001::/32`: its server and its client, the
last 32 bits inverted) and ISATAP interface ids (`::5efe:a.b.c.d`, behind any prefix, which must
be public too).

Host names and IPv4 literals resolve through `getaddrinfo`, the call the HTTP client's connect
makes, so integer, hex, octal and short spellings (`2130706433`, `0x7f000001`, `0177.0.0.1`,
`127.1`) are checked as the address they will reach; the sender then connects to the checked
address itself, never to the name again.
"""

from __future__ import annotations

import ipaddress
import socket
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from urllib.parse import urlsplit

Address = IPv4Address | IPv6Address

MAPPED = IPv6Network("::ffff:0:0/96")
COMPATIBLE = IPv6Network("::/96")
TRANSLATED = IPv6Network("::ffff:0:0:0/96")
NAT64 = IPv6Network("64:ff9b::/96")
NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")
SIX_TO_FOUR = IPv6Network("2002::/16")
TEREDO = IPv6Network("2001::/32")
# Prefixes whose own standing does not matter: what counts is the IPv4 address they carry
# (Python's tables call some of them global, Teredo not, whatever it carries).
TRANSLATION_PREFIXES = (MAPPED, COMPATIBLE, TRANSLATED, NAT64, NAT64_LOCAL, SIX_TO_FOUR, TEREDO)
RFC6052_LENGTHS = (48, 56, 64, 96)  # the prefix lengths possible inside 64:ff9b:1::/48
ISATAP_IDS = (0x00005EFE, 0x02005EFE)  # bits 64-95 of an ISATAP address (local / universal)


class WebhookRefused(ValueError):
    """A destination the service will not POST to."""


def rfc6052(address: IPv6Address, length: int) -> IPv4Address | None:
    """The IPv4 address at RFC 6052's place for a /`length` translation prefix, or None where
    that reading breaks the format (bits 64-71 and the suffix are zero)."""
    octets = address.packed
    if octets[8]:
        return None
    rest = octets[:8] + octets[9:]  # the IPv4 octets skip bits 64-71
    start = length // 8 - (1 if length == 96 else 0)
    if any(rest[start + 4 :]):
        return None
    return IPv4Address(rest[start : start + 4])


def carried_ipv4(address: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (none for a plain one)."""
    low = IPv4Address(int(address) & 0xFFFFFFFF)
    if address in MAPPED or address in COMPATIBLE or address in TRANSLATED or address in NAT64:
        return [low]
    if address in NAT64_LOCAL:
        readings = [rfc6052(address, length) for length in RFC6052_LENGTHS]
        return [reading for reading in readings if reading is not None]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if (int(address) >> 32) & 0xFFFFFFFF in ISATAP_IDS:
        return [low]
    return []


def internal(address: Address) -> bool:
    """Not the public internet (see the module's docstring for what counts)."""
    if isinstance(address, IPv6Address):
        carried = carried_ipv4(address)
        if any(address in prefix for prefix in TRANSLATION_PREFIXES):
            # No readable IPv4 address (a malformed local-use NAT64 one): refuse, to be safe.
            return not carried or any(internal(ipv4) for ipv4 in carried)
        if any(internal(ipv4) for ipv4 in carried) or address.is_site_local:
            return True
    return address.is_multicast or not address.is_global


def allowed(host: str, addresses: list[Address], allow: str) -> bool:
    """Whether `CASCADE_WEBHOOK_ALLOW` (comma-separated hosts and networks) lets `host` in: by
    name, or with every address in an allowed network (directly or by the IPv4 it carries)."""
    entries = [entry.strip() for entry in allow.split(",") if entry.strip()]
    if host.lower() in (entry.lower() for entry in entries):
        return True
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name

    def admitted(address: Address) -> bool:
        forms = [address, *(carried_ipv4(address) if address.version == 6 else [])]
        return any(form in network for form in forms for network in networks)

    return bool(addresses) and all(admitted(address) for address in addresses)


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal, in any spelling, to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def destination(url: str) -> str:
    """The `host:port` a URL is sent to (the unit of the sender's per-destination limit)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def check_destination(url: str, allow: str, *, must_resolve: bool) -> list[Address]:
    """The addresses `url` may be POSTed to; raises WebhookRefused for an internal one. A name
    that does not resolve is refused only when `must_resolve` (at send time)."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookRefused("webhook_url must be an http(s) URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(host, port)
    except ValueError as error:  # a port out of range
        raise WebhookRefused(f"webhook_url {url!r} is not a valid URL: {error}") from None
    except (socket.gaierror, UnicodeError) as error:
        if must_resolve:
            raise WebhookRefused(f"webhook host {host} does not resolve: {error}") from None
        return []
    if allowed(host, addresses, allow):
        return addresses
    refused = [str(address) for address in addresses if internal(address)]
    if refused:
        raise WebhookRefused(
            f"webhook_url {host} points at an internal address ({', '.join(refused)}): "
            "loopback, private, link-local, shared, reserved and multicast destinations are "
            "refused, also when carried inside an IPv6 address (NAT64, 6to4, Teredo, "
            "IPv4-mapped); an operator can allow a receiver with CASCADE_WEBHOOK_ALLOW"
        )
    return addresses
