"""The one host rule: case, port, trailing dot, IPv6 literals; invalid hosts refused."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.hosts import InvalidHost, addressed_host, normalize_host


@pytest.mark.parametrize(
    ("written", "matched"),
    [
        ("ipfs.example.com", "ipfs.example.com"),
        ("IPFS.Example.COM", "ipfs.example.com"),
        ("ipfs.example.com.", "ipfs.example.com"),
        ("ipfs.example.com.:8443", "ipfs.example.com"),
        ("rpc.localhost:8080", "rpc.localhost"),
        ("_node.internal", "_node.internal"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:8080", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[FE80::1]", "fe80::1"),
        ("2001:db8::7", "2001:db8::7"),
    ],
)
def test_hosts_match_as_written_in_any_of_their_forms(written: str, matched: str) -> None:
    assert normalize_host(written) == matched
    assert addressed_host(written) == matched


@pytest.mark.parametrize(
    "written",
    [
        "",
        ":::",
        "999.1.1.1",
        "1.2.3",
        "01.2.3.4",
        "[::1",
        "[::1]x",
        "[nothex::1]",
        "[::1]:99999",
        "host:port",
        "host:",
        "-leading.example",
        "trailing-.example",
        "two..dots",
        "a b",
        "x" * 64 + ".example",
        ".",
        "host..",
    ],
)
def test_values_that_are_no_host_are_refused_quoting_them(written: str) -> None:
    with pytest.raises(InvalidHost) as refused:
        normalize_host(written)
    assert repr(written) in str(refused.value)
    assert addressed_host(written) is None


_labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda label: not label.isdigit()
)


@given(
    labels=st.lists(_labels, min_size=1, max_size=4),
    upper=st.booleans(),
    dot=st.booleans(),
    port=st.none() | st.integers(0, 65535),
)
@example(labels=["ipfs", "example", "com"], upper=True, dot=True, port=8080)
def test_case_port_and_trailing_dot_never_change_the_host(
    labels: list[str], upper: bool, dot: bool, port: int | None
) -> None:
    name = ".".join(labels)
    written = (name.upper() if upper else name) + ("." if dot else "")
    if port is not None:
        written += f":{port}"
    assert normalize_host(written) == name


@given(address=st.ip_addresses(v=6), port=st.none() | st.integers(0, 65535))
def test_an_ipv6_literal_is_its_address(address: ipaddress.IPv6Address, port: int | None) -> None:
    written = f"[{address.exploded.upper()}]" + ("" if port is None else f":{port}")
    assert normalize_host(written) == address.compressed
