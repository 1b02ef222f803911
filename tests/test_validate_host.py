"""``validate.is_host``: host names by their labels, and IP addresses."""

from __future__ import annotations

import contextlib
import ipaddress
import re

from hypothesis import given
from hypothesis import strategies as st

from portunus.server.validate import is_host

LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def by_labels(value: str) -> bool:
    """The definition: 1-253 characters, dot-separated labels of 1-63
    letters, digits, '_' or inner '-', one optional trailing dot; or an IP."""
    labels = value.removesuffix(".").split(".")
    named = 0 < len(value) <= 253 and all(LABEL.match(label) for label in labels)
    return named or _is_ip(value)


def _is_ip(value: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(value) is not None
    return False


@given(st.text(alphabet="aZ09_-.:", max_size=80))
def test_is_host_agrees_with_the_label_by_label_definition(value):
    assert is_host(value) == by_labels(value)


@given(st.lists(st.text(alphabet="ab-", min_size=1, max_size=66), min_size=1, max_size=5))
def test_label_lengths_and_hyphens(labels):
    value = ".".join(labels)
    assert is_host(value) == by_labels(value)


def test_examples():
    for good in ("edge1", "db.internal.", "10.0.0.1", "2001:db8::1", "_srv.example", "a" * 63):
        assert is_host(good), good
    for bad in ("", ".", "a..b", "-a", "a-", "a" * 64, "a b", "x." * 127 + "x", "1:2:3"):
        assert not is_host(bad), bad
