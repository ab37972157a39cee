"""``proxy.stripHeaders``: header names the user's upstream trusts, validated at load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.schema import ProxySettings


def test_spoofed_identity_headers_strip_list_accepts_header_names() -> None:
    """Plain names (letters, digits, '-') are kept as given; the default is empty."""
    assert ProxySettings().strip_headers == []
    assert ProxySettings.model_validate({"stripHeaders": ["X-Tenant", "x-role-2"]}).strip_headers == ["X-Tenant", "x-role-2"]


@pytest.mark.parametrize("name", ["", "X Tenant", "X_Tenant", "X.Tenant", "X-Tenant:", "-X", "X-Ténant", "a" * 129])
def test_spoofed_identity_headers_strip_list_rejects_what_is_not_a_plain_header_name(name: str) -> None:
    """A name with '_' or '.' would never match what the proxy strips (such spellings are refused), so it is a
    configuration error, as is anything that is not a header name."""
    with pytest.raises(ValidationError, match="stripHeaders"):
        ProxySettings.model_validate({"stripHeaders": [name]})


def test_spoofed_identity_headers_strip_list_accepts_prefixes() -> None:
    """A prefix ends in '*' after at least two name characters (issue 10 item 6)."""
    names = ["X-Legacy-*", "x-internal*", "Ab*"]
    assert ProxySettings.model_validate({"stripHeaders": names}).strip_headers == names


@pytest.mark.parametrize("name", ["*", "X*", "X-*-Role", "X-Legacy-**", "*-User", "X_Legacy_*", "X.Legacy.*",
                                  "X-Legacy-* ", "a" * 128 + "*"])
def test_spoofed_identity_headers_strip_list_rejects_malformed_prefixes(name: str) -> None:
    """'*' only at the end, after a plain name of two or more characters: a bare '*' or 'X*' would strip nearly
    every header, and a '_'/'.' prefix would never match what the proxy forwards."""
    with pytest.raises(ValidationError, match="stripHeaders"):
        ProxySettings.model_validate({"stripHeaders": [name]})
