"""Path normalization (the gate's step 2): one canonical string, or a 400."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.errors import GateError
from proxy.paths import normalize_path


class TestNormalizes:
    @pytest.mark.parametrize(("raw", "expected"), [
        (b"/", "/"),
        (b"/orders", "/orders"),
        (b"/orders/7", "/orders/7"),
        (b"/orders/", "/orders/"),
        (b"/a/./b", "/a/b"),
        (b"/a/b/../c", "/a/c"),
        (b"/a/b/..", "/a/"),
        (b"/a/.", "/a/"),
        (b"/public/../admin", "/admin"),
        (b"/public/%2e%2e/admin", "/admin"),
        (b"/public/%2E%2E/admin", "/admin"),
        (b"/%61dmin", "/admin"),
        (b"/a/%7e", "/a/~"),
        (b"/a%20b", "/a%20b"),
        (b"/a%3fb", "/a%3Fb"),
        (b"/a/.hidden", "/a/.hidden"),
        (b"/api%2e/x", "/api./x"),
    ])
    def test_canonical_form(self, raw: bytes, expected: str) -> None:
        """Unreserved escapes are decoded once, other escapes upper-cased, dot segments removed (RFC 3986 §5.2.4, §6.2.2)."""
        assert normalize_path(raw) == expected


class TestRejects:
    @pytest.mark.parametrize("raw", [
        b"/..", b"/a/../..", b"/%2e%2e", b"/%2e%2e/admin",      # climbing above the root
        b"//admin", b"/public//..//admin", b"/a//b",           # empty segments are never collapsed silently
        b"/admin%2F", b"/public%2F..%2Fadmin", b"/a%2fb",      # encoded slash
        b"/admin%5C", b"/a%5cb", b"/admin\\", b"/public\\..\\admin",  # backslash, raw or encoded
        b"/admin%00", b"/a\x00",                               # NUL
        b"/%252e%252e/admin", b"/a%2541",                      # double encoding
        b"/a%2", b"/a%", b"/a%zz", b"/a%g1",                   # invalid escapes
        b"/admin;x=1", b"/public;/../admin",                   # matrix parameters
        b"/admin#x", b"/public#/../admin",                     # fragments
        b"admin", b"", b"*", b"http://evil/admin",             # not origin-form
        b"/\xc3\xa9", b"/a b", b"/a\tb", b"/a\r\nX: y",        # non-ASCII, spaces, controls
    ])
    def test_ambiguous_paths_are_400(self, raw: bytes) -> None:
        """Anything that two parsers could read differently is refused with 400 bad_path."""
        with pytest.raises(GateError) as info:
            normalize_path(raw)
        assert info.value.status_code == 400
        assert info.value.reason == "bad_path"


_alphabet = st.sampled_from([b"/", b".", b"..", b"%", b"%2e", b"%2E", b"%2f", b"%5c", b"%00", b"%25", b"%41", b"%7e",
                             b"%20", b"a", b"b", b"2", b"e", b"F", b";", b"\\", b"~", b"-", b"_", b"#", b"?", b"\x00",
                             b"\xff", b" ", b":", b"@"])
raw_paths = st.lists(_alphabet, max_size=24).map(lambda parts: b"/" + b"".join(parts))


class TestProperties:
    @given(raw_paths)
    def test_idempotent(self, raw: bytes) -> None:
        """Normalizing a normalized path changes nothing."""
        try:
            once = normalize_path(raw)
        except GateError:
            return
        assert normalize_path(once.encode("ascii")) == once

    @given(raw_paths)
    def test_a_decoding_upstream_sees_the_same_segments(self, raw: bytes) -> None:
        """An upstream that fully percent-decodes the forwarded path sees exactly the segments the gate checked:
        no hidden separator, no dot segment, no empty segment, no backslash or NUL."""
        try:
            path = normalize_path(raw)
        except GateError:
            return
        assert path.startswith("/")
        segments = path.split("/")[1:]
        decoded_segments = [unquote(s) for s in segments]
        assert unquote(path).split("/")[1:] == decoded_segments
        for index, segment in enumerate(decoded_segments):
            assert segment not in (".", "..")
            assert "\\" not in segment and "\x00" not in segment
            assert segment != "" or index == len(segments) - 1
