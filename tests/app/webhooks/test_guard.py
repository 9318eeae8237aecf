"""The address guard and the retry schedule, without a network."""

from __future__ import annotations

import ipaddress
import random

import pytest

from app.settings import Settings
from app.webhooks.delivery import retry_delay
from app.webhooks.guard import BlockedDestination, check_address, checked_destination, networks


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
    ],
)
def test_non_public_addresses_are_refused(address):
    with pytest.raises(BlockedDestination, match="not a public address"):
        check_address(ipaddress.ip_address(address), [])


def test_public_addresses_and_allowlisted_networks_pass():
    check_address(ipaddress.ip_address("93.184.215.14"), [])
    check_address(ipaddress.ip_address("2606:4700::1111"), [])
    check_address(ipaddress.ip_address("10.0.0.5"), networks(["10.0.0.0/8"]))


def test_a_name_is_checked_by_what_it_resolves_to_and_the_request_pinned_to_it():
    with pytest.raises(BlockedDestination, match="not a public address"):
        checked_destination("http://localhost:8080/hook", [])
    pinned = checked_destination("http://localhost:8080/hook?a=1", networks(["127.0.0.0/8", "::1/128"]))
    assert pinned.url in ("http://127.0.0.1:8080/hook?a=1", "http://[::1]:8080/hook?a=1")
    assert pinned.host_header == "localhost:8080" and pinned.sni_hostname is None
    with pytest.raises(BlockedDestination, match="cannot resolve"):
        checked_destination("https://no-such-host.invalid/hook", [])


def test_retries_follow_the_schedule_with_jitter_and_stop_after_it():
    settings = Settings(webhook_retry_schedule="5,60,3600")
    rng = random.Random(0)
    for failures, base in ((1, 5), (2, 60), (3, 3600)):
        delays = [retry_delay(settings, failures, rng) for _ in range(200)]
        assert all(base * 0.8 <= delay <= base * 1.2 for delay in delays)
        assert max(delays) - min(delays) > base * 0.2  # really jittered
    assert retry_delay(settings, 4, rng) is None
    default = Settings().webhook_retry_schedule
    assert 20 * 3600 <= sum(default) <= 24 * 3600  # retried for up to a day


def test_the_schedule_and_the_allowlist_are_validated():
    with pytest.raises(ValueError, match="positive"):
        Settings(webhook_retry_schedule="5,-1")
    with pytest.raises(ValueError):
        Settings(webhook_allowed_networks="10.0.0.0/33")
