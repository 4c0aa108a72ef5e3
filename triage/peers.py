"""Which network addresses may talk to a listener: one parser and one test for the DICOM
(``dicom_allowed_peers``, per calling AE title) and HL7 (``hl7_allowed_peers``) allowlists.

An entry is an address or a network in CIDR form (``10.0.0.7``, ``10.0.4.0/24``, ``fd00::/8``);
host bits are ignored. A peer's address is matched without its IPv6 zone (``fe80::1%eth0``);
an address that cannot be read matches no network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(entry: str) -> Network:
    """The network of one allowlist entry; ``ValueError`` when it is neither an address nor
    a network."""
    return ipaddress.ip_network(entry.strip(), strict=False)


def checked(values: Iterable[object], wildcard: bool = False) -> list[str]:
    """``values`` as allowlist entries (stripped strings), each checked by :func:`network`
    (``*`` passes where ``wildcard``); ``ValueError`` naming the first that is neither an
    address nor a network."""
    out = []
    for value in values:
        entry = str(value).strip()
        if not (wildcard and entry == "*"):
            try:
                network(entry)
            except ValueError:
                raise ValueError(f"{value!r} is not an address or network") from None
        out.append(entry)
    return out


def networks(entries: list[str]) -> list[Network]:
    """The networks of allowlist ``entries`` (each checked by :func:`network`)."""
    return [network(e) for e in entries]


def address_in(address: str, nets: list[Network]) -> bool:
    """Whether the peer ``address`` lies in one of ``nets``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in n for n in nets)
