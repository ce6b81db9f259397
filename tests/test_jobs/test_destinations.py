"""Webhook destinations, as a table: each URL refused or allowed, written out by hand, at
submission and at send time; IPv4 carried inside IPv6 (NAT64, 6to4, Teredo, mapped,
compatible, translated, ISATAP) and IPv4 spelled as integers, hex, octal or short forms."""

from __future__ import annotations

import socket

import pytest

from jobs.destinations import WebhookRefused, check_destination

REFUSED = "refused"
ALLOWED = "allowed"

# (url, CASCADE_WEBHOOK_ALLOW, expected, why)
TABLE = [
    # Plain IPv4 and names.
    ("http://127.0.0.1/", "", REFUSED, "loopback"),
    ("http://localhost/", "", REFUSED, "a name for loopback"),
    ("http://10.0.0.1/", "", REFUSED, "private"),
    ("http://172.16.0.1/", "", REFUSED, "private"),
    ("http://192.168.1.1/", "", REFUSED, "private"),
    ("http://169.254.169.254/", "", REFUSED, "link-local (cloud metadata)"),
    ("http://100.64.0.1/", "", REFUSED, "shared address space (CGNAT)"),
    ("http://100.127.255.254/", "", REFUSED, "the top of 100.64.0.0/10"),
    ("http://0.0.0.0/", "", REFUSED, "unspecified"),
    ("http://224.0.0.1/", "", REFUSED, "multicast"),
    ("http://240.0.0.1/", "", REFUSED, "reserved"),
    ("http://255.255.255.255/", "", REFUSED, "broadcast"),
    ("http://198.18.0.1/", "", REFUSED, "benchmarking"),
    ("http://192.0.2.1/", "", REFUSED, "documentation"),
    ("https://93.184.215.14/hook", "", ALLOWED, "public"),
    ("http://8.8.8.8:8443/x?y=1", "", ALLOWED, "public, with a port and a query"),
    # IPv4 in other spellings: checked as the address a connect reaches.
    ("http://2130706433/", "", REFUSED, "127.0.0.1 as one decimal number"),
    ("http://0x7f000001/", "", REFUSED, "127.0.0.1 as one hex number"),
    ("http://0177.0.0.1/", "", REFUSED, "127.0.0.1 with an octal first part"),
    ("http://127.1/", "", REFUSED, "127.0.0.1 in two parts"),
    ("http://0x7f.1/", "", REFUSED, "127.0.0.1 in two parts, hex"),
    ("http://0300.0250.0.1/", "", REFUSED, "192.168.0.1 in octal"),
    ("http://012.0.0.1/", "", REFUSED, "10.0.0.1: 012 is octal 10"),
    ("http://134744072/", "", ALLOWED, "8.8.8.8 as one decimal number"),
    ("http://0x8080808/", "", ALLOWED, "8.8.8.8 as one hex number"),
    ("http://010.0.0.1/", "", ALLOWED, "8.0.0.1 (010 is octal 8), not 10.0.0.1"),
    # Plain IPv6.
    ("http://[::1]/", "", REFUSED, "loopback"),
    ("http://[::]/", "", REFUSED, "unspecified"),
    ("http://[fe80::1]/", "", REFUSED, "link-local"),
    ("http://[fd00::1]/", "", REFUSED, "unique local"),
    ("http://[fec0::1]/", "", REFUSED, "site-local (deprecated, still routed inside some sites)"),
    ("http://[ff02::1]/", "", REFUSED, "multicast"),
    ("http://[2001:db8::1]/", "", REFUSED, "documentation"),
    ("http://[2606:4700:4700::1111]/", "", ALLOWED, "public"),
    ("http://[2001:4860:4860::8888]/", "", ALLOWED, "public"),
    # IPv4-mapped, -compatible and -translated.
    ("http://[::ffff:127.0.0.1]/", "", REFUSED, "mapped loopback"),
    ("http://[::ffff:a00:1]/", "", REFUSED, "mapped 10.0.0.1, in hex"),
    ("http://[::ffff:169.254.169.254]/", "", REFUSED, "mapped metadata address"),
    ("http://[::10.0.0.1]/", "", REFUSED, "compatible 10.0.0.1"),
    ("http://[::ffff:0:10.0.0.1]/", "", REFUSED, "translated (SIIT) 10.0.0.1"),
    ("http://[::ffff:8.8.8.8]/", "", ALLOWED, "mapped public"),
    ("http://[::8.8.8.8]/", "", ALLOWED, "compatible public"),
    ("http://[::ffff:0:808:808]/", "", ALLOWED, "translated public"),
    # NAT64, the well-known prefix.
    ("http://[64:ff9b::a00:1]/", "", REFUSED, "NAT64 of 10.0.0.1"),
    ("http://[64:ff9b::127.0.0.1]/", "", REFUSED, "NAT64 of loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "", REFUSED, "NAT64 of 169.254.169.254"),
    ("http://[64:ff9b::6440:1]/", "", REFUSED, "NAT64 of 100.64.0.1 (CGNAT)"),
    ("http://[64:ff9b::e000:1]/", "", REFUSED, "NAT64 of 224.0.0.1 (multicast)"),
    ("http://[64:ff9b::]/", "", REFUSED, "NAT64 of 0.0.0.0"),
    ("http://[64:ff9b::808:808]/", "", ALLOWED, "NAT64 of 8.8.8.8"),
    ("http://[64:ff9b::8.8.8.8]/", "", ALLOWED, "NAT64 of 8.8.8.8, dotted"),
    # NAT64, the local-use prefix (any RFC 6052 prefix length).
    ("http://[64:ff9b:1::a00:1]/", "", REFUSED, "local-use /96 of 10.0.0.1"),
    ("http://[64:ff9b:1:a00:0:100::]/", "", REFUSED, "local-use /48 of 10.0.0.1"),
    ("http://[64:ff9b:1::808:808]/", "", ALLOWED, "local-use /96 of 8.8.8.8"),
    ("http://[64:ff9b:1:808:8:800::]/", "", REFUSED, "/48 of 8.8.8.8 reads 0.0.0.0 as a /96"),
    ("http://[64:ff9b:1:0:ff00::808:808]/", "", REFUSED, "local-use, bits 64-71 set: unreadable"),
    # 6to4.
    ("http://[2002:a00:1::1]/", "", REFUSED, "6to4 of 10.0.0.1"),
    ("http://[2002:7f00:1::]/", "", REFUSED, "6to4 of loopback"),
    ("http://[2002:c0a8:101::1]/", "", REFUSED, "6to4 of 192.168.1.1"),
    ("http://[2002:808:808::1]/", "", ALLOWED, "6to4 of 8.8.8.8"),
    # Teredo: server 65.54.227.120, client the last 32 bits inverted.
    ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "", REFUSED, "client 10.0.0.1"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "", REFUSED, "client 127.0.0.1"),
    ("http://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/", "", REFUSED, "server 10.0.0.1"),
    ("http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/", "", ALLOWED, "client 8.8.8.8"),
    # ISATAP interface ids, behind any prefix.
    ("http://[2606:4700::5efe:a00:1]/", "", REFUSED, "ISATAP to 10.0.0.1"),
    ("http://[2606:4700::200:5efe:7f00:1]/", "", REFUSED, "ISATAP (universal) to loopback"),
    ("http://[fe80::5efe:808:808]/", "", REFUSED, "ISATAP behind a link-local prefix"),
    ("http://[2606:4700::5efe:808:808]/", "", ALLOWED, "ISATAP to 8.8.8.8, public prefix"),
    # CASCADE_WEBHOOK_ALLOW admits internal receivers, also when carried.
    ("http://127.0.0.1:9000/", "127.0.0.1", ALLOWED, "allowed by address"),
    ("http://0x7f000001:9000/", "127.0.0.0/8", ALLOWED, "allowed network, hex spelling"),
    ("http://10.1.2.3/", "10.0.0.0/8", ALLOWED, "allowed network"),
    ("http://localhost/", "localhost", ALLOWED, "allowed by name"),
    ("http://10.1.2.3/", "192.168.0.0/16", REFUSED, "another network allowed"),
    ("http://[64:ff9b::a00:1]/", "10.0.0.0/8", ALLOWED, "NAT64 of an allowed network"),
    ("http://[2002:a00:1::1]/", "10.0.0.0/8", ALLOWED, "6to4 of an allowed network"),
    ("http://[64:ff9b::a00:1]/", "192.168.0.0/16", REFUSED, "NAT64 of another network"),
]


@pytest.mark.parametrize("must_resolve", [False, True], ids=["submission", "send"])
@pytest.mark.parametrize(
    ("url", "allow", "expected", "why"),
    TABLE,
    ids=[f"{t[0]} allow={t[1]}" if t[1] else t[0] for t in TABLE],
)
def test_destination_table(url: str, allow: str, expected: str, why: str, must_resolve: bool):
    if expected == REFUSED:
        with pytest.raises(WebhookRefused, match="internal address"):
            check_destination(url, allow, must_resolve=must_resolve)
    else:
        assert check_destination(url, allow, must_resolve=must_resolve), why


def test_the_table_is_wide():
    assert len(TABLE) >= 40
    assert {expected for _, _, expected, _ in TABLE} == {REFUSED, ALLOWED}


def test_the_checked_address_is_what_the_spelling_reaches():
    """The sender connects to the address returned here, so it must be the one a connect to
    the spelled host would reach, not a parse of the text."""
    assert [str(a) for a in check_destination("http://010.0.0.1/", "", must_resolve=True)] == [
        "8.0.0.1"
    ]
    assert [str(a) for a in check_destination("http://0x8080808/", "", must_resolve=True)] == [
        "8.8.8.8"
    ]


def test_a_name_that_resolves_to_nat64_of_a_private_address(monkeypatch: pytest.MonkeyPatch):
    """DNS64 synthesizes 64:ff9b::a00:1 for a name whose A record is 10.0.0.1: refused at send
    time; a name synthesized from a public address goes through."""
    answers = {"inside.example": "64:ff9b::a00:1", "outside.example": "64:ff9b::808:808"}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (answers[host], port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(WebhookRefused, match=r"internal address \(64:ff9b::a00:1\)"):
        check_destination("https://inside.example/hook", "", must_resolve=True)
    addresses = check_destination("https://outside.example/hook", "", must_resolve=True)
    assert [str(address) for address in addresses] == ["64:ff9b::808:808"]
