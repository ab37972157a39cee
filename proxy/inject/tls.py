"""The webhook's certificate, read from files and reloaded when they change (cert-manager rotates them).

The listening socket keeps one SSLContext; its SNI callback, called in every handshake, hands the
connection the newest context. A new pair of files is loaded into a *fresh* context and swapped in only
once the certificate and key are read and match, so a half-written rotation (new certificate, old key)
keeps serving the previous pair instead of breaking the webhook.
"""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

Stamp = tuple[tuple[int, int, int], ...]


class ReloadingCertificate:
    def __init__(self, cert_file: str | Path, key_file: str | Path,
                 on_reload: Callable[[bool], None] | None = None) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self._current = self._load()  # at start-up an unreadable pair is an error the caller reports
        self.not_after = self._expiry()
        self.listening = self._load()
        self.listening.sni_callback = self._select

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _read_stamp(self) -> Stamp:
        # stat() follows the symlinks a Kubernetes Secret volume swaps atomically (..data), so a rotation
        # changes the inode even when the size and mtime happen to be equal.
        stamps = []
        for path in (self.cert_file, self.key_file):
            try:
                st = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _expiry(self) -> float:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError):
            return 0.0
        return cert.not_valid_after_utc.timestamp()

    def check(self) -> bool:
        """Load the files again if they changed; True when a new pair is now served."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # tried once per change: a bad pair is not retried on every handshake
            try:
                context = self._load()
            except (OSError, ssl.SSLError) as exc:
                print(f"scopegate inject: keeping the previous certificate, the new files do not load: {exc}",
                      file=sys.stderr, flush=True)
                if self._on_reload is not None:
                    self._on_reload(False)
                return False
            self._current = context
            self.not_after = self._expiry()
        print(f"scopegate inject: reloaded the certificate from {self.cert_file}", file=sys.stderr, flush=True)
        if self._on_reload is not None:
            self._on_reload(True)
        return True

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                listening: ssl.SSLContext) -> None:
        self.check()
        connection.context = self._current


__all__ = ["ReloadingCertificate"]
