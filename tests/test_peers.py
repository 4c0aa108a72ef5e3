"""triage/peers.py: the one address-in-allowlist test of the DICOM and HL7 listeners."""

from __future__ import annotations

import pytest

from triage.peers import address_in, checked, network, networks


def test_addresses_and_networks_match_as_written() -> None:
    nets = networks(["10.0.0.7", "192.0.2.0/24", " fd00::/8 ", "10.1.2.3/16"])
    assert address_in("10.0.0.7", nets) and not address_in("10.0.0.8", nets)
    assert address_in("192.0.2.200", nets) and not address_in("192.0.3.1", nets)
    assert address_in("fd12::5", nets) and not address_in("fe80::1", nets)
    assert address_in("10.1.200.9", nets)  # host bits of an entry are ignored


def test_a_zoned_ipv6_peer_is_matched_without_its_zone() -> None:
    assert address_in("fe80::1%eth0", networks(["fe80::/10"]))


@pytest.mark.parametrize("address", ["", "?", "not-an-address", "10.0.0"])
def test_an_unreadable_peer_address_matches_nothing(address: str) -> None:
    assert not address_in(address, networks(["0.0.0.0/0", "::/0"]))


def test_a_bad_entry_is_refused() -> None:
    with pytest.raises(ValueError):
        network("10.0.0.300")


def test_checked_entries_are_stripped_and_name_the_first_bad_one() -> None:
    assert checked([" 10.0.0.7", "fd00::/8 "]) == ["10.0.0.7", "fd00::/8"]
    assert checked(["*", "10.0.0.7"], wildcard=True) == ["*", "10.0.0.7"]
    with pytest.raises(ValueError, match="'\\*' is not an address or network"):
        checked(["*"])
    with pytest.raises(ValueError, match="'x' is not"):
        checked(["10.0.0.7", "x", "y"])
