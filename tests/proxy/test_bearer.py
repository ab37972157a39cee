"""Bearer extraction (the gate's step 5): RFC 6750 §2.1 only."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.errors import BearerError
from proxy.bearer import extract_bearer


def extract(*values: bytes, other: bool = False) -> str:
    return extract_bearer(list(values), other_method=other, realm="orders")


class TestExtracts:
    @pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
    def test_scheme_is_case_insensitive(self, scheme: bytes) -> None:
        """RFC 9110 §11.1: the auth-scheme is case-insensitive."""
        assert extract(scheme + b" abc.def.ghi") == "abc.def.ghi"

    def test_several_spaces_after_the_scheme(self) -> None:
        """RFC 6750 §2.1: "Bearer" 1*SP b64token."""
        assert extract(b"Bearer   abc") == "abc"

    def test_b64token_characters_are_kept_as_sent(self) -> None:
        """'+', '/', '~' and trailing '=' are b64token characters: extracted untouched (they fail JWT parsing later)."""
        assert extract(b"Bearer a+b/c~d==") == "a+b/c~d=="


class TestRejects:
    def test_no_header_is_a_bare_challenge(self) -> None:
        """RFC 6750 §3.1: without credentials the challenge carries no error code."""
        with pytest.raises(BearerError) as info:
            extract()
        err = info.value
        assert err.status_code == 401 and err.reason == "missing_token"
        assert err.get_headers()["WWW-Authenticate"] == 'Bearer realm="orders"'

    @pytest.mark.parametrize("value", [b"Basic dXNlcjpwYXNz", b"Token abc", b"Bearerabc", b"Digest x"])
    def test_another_scheme_is_a_bare_challenge(self, value: bytes) -> None:
        """Another scheme is not a bearer credential: 401 with the bare challenge."""
        with pytest.raises(BearerError) as info:
            extract(value)
        assert info.value.status_code == 401 and info.value.error is None

    @pytest.mark.parametrize("value", [b"Bearer", b"Bearer ", b"Bearer a b", b"Bearer a,b", b"Bearer a=b",
                                       b"Bearer \"abc\"", b"Bearer a\tb", b"Bearer ab\xc3\xa9"])
    def test_malformed_credentials_are_400(self, value: bytes) -> None:
        """A bearer credential that is not one b64token is invalid_request (RFC 6750 §3.1)."""
        with pytest.raises(BearerError) as info:
            extract(value)
        assert info.value.status_code == 400 and info.value.error == "invalid_request"

    def test_two_authorization_headers_are_400(self) -> None:
        """Two Authorization headers are two credentials: invalid_request, never first- or last-wins."""
        with pytest.raises(BearerError) as info:
            extract(b"Bearer a", b"Bearer a")
        assert info.value.status_code == 400

    def test_header_plus_query_or_body_is_400(self) -> None:
        """RFC 6750 §2: 'Clients MUST NOT use more than one method to transmit the token in each request'."""
        with pytest.raises(BearerError) as info:
            extract(b"Bearer a", other=True)
        assert info.value.status_code == 400 and info.value.error == "invalid_request"

    def test_query_token_alone_counts_as_no_credentials(self) -> None:
        """The query and body methods are off: a token only there gets the bare 401 challenge."""
        with pytest.raises(BearerError) as info:
            extract(other=True)
        assert info.value.status_code == 401 and info.value.error is None


_b64 = st.text(alphabet="ABCxyz019-._~+/", min_size=1, max_size=40).map(lambda s: s + "==")


class TestProperties:
    @given(_b64, st.sampled_from(["Bearer", "bearer", "BEARER"]), st.integers(min_value=1, max_value=4))
    def test_any_b64token_round_trips(self, token: str, scheme: str, spaces: int) -> None:
        """Every b64token is extracted exactly as sent."""
        assert extract(f"{scheme}{' ' * spaces}{token}".encode()) == token

    @given(st.binary(max_size=60))
    def test_any_header_value_gives_a_token_or_a_bearer_error(self, value: bytes) -> None:
        """Arbitrary bytes never crash the extractor: a well-formed b64token, or a 400/401 BearerError."""
        try:
            token = extract(value)
        except BearerError as exc:
            error: BearerError | None = exc
        else:
            error = None
        if error is not None:
            assert error.status_code in (400, 401)
            assert error.reason in ("missing_token", "invalid_request")
            return
        assert token and " " not in token and "," not in token
        assert value.lower().startswith(b"bearer ")


def _reference(value: bytes) -> str | None:
    """The single-header rule written out plainly: case-insensitive scheme, spaces, a b64token."""
    scheme, _, rest = value.decode("latin-1").partition(" ")
    token = rest.lstrip(" ")
    if scheme.lower() != "bearer" or not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token):
        return None
    return token


_PREFIXES = ["Bearer ", "bEaReR   ", "BEARER ", "Bearer", "Bearer\t", "Bearerx ", "Basic ", " Bearer ", ""]


@given(st.tuples(st.sampled_from(_PREFIXES), st.text(alphabet="ab0+/-._~= \t,\u00e9\r", max_size=24))
       .map(lambda parts: (parts[0] + parts[1]).encode("latin-1")))
def test_fast_path_agrees_with_the_rule(value: bytes) -> None:
    """Whatever the header holds, the token returned (or the refusal) is the one the plain rule gives."""
    try:
        got: str | None = extract_bearer([value], other_method=False, realm="orders")
    except BearerError:
        got = None
    assert got == _reference(value)
