"""Step 3 of the gate: which authorization server decides for this path.

Each AS has exactly one resource, an absolute URI; the request path belongs to the AS whose resource
path is the longest segment-aligned prefix of it (DESIGN §2.3: ``/orders`` covers ``/orders`` and
``/orders/7``, not ``/ordersX``). An AS with ``matchHost`` also requires the request's Host to name the
resource's host: compared lower-case, without a trailing dot, and with the port only when both give one
(security.md §3.5: the client Host is used only for routing, never to build a URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from config.schema import AuthorizationServerConfig, ScopegateConfig, resource_path


@dataclass(frozen=True, slots=True)
class Resource:
    as_id: str
    path: str
    """Segment-aligned prefix without a trailing slash, ``/`` for the root."""
    prefix: str
    """``path + "/"`` (or ``/`` for the root): a path under this resource starts with it."""
    host: str | None
    """Lower-case hostname when ``matchHost`` is on."""
    port: int | None
    server: AuthorizationServerConfig


def split_host(value: str) -> tuple[str, int | None]:
    """``Host`` header (or URI authority) → (lower-case hostname without a trailing dot, port or None)."""
    value = value.strip().lower()
    port: int | None = None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    else:
        host, sep, maybe_port = value.rpartition(":")
        if sep and maybe_port.isdigit():
            port = int(maybe_port)
        else:
            host = value
    return host.rstrip("."), port


class ResourceMap:
    """The resources of every AS, longest path first; built once per configuration."""

    def __init__(self, cfg: ScopegateConfig) -> None:
        resources: list[Resource] = []
        for server in cfg.authorization_servers:
            if server.status != "ACTIVE":
                continue
            uri = server.resource
            path = resource_path(uri)
            host: str | None = None
            port: int | None = None
            if server.match_host:
                host, port = split_host(urlsplit(uri).netloc)
            prefix = "/" if path == "/" else path + "/"
            resources.append(Resource(server.id, path, prefix, host, port, server))
        # Longest first; among equal paths, the host-bound ones before a host-less one.
        resources.sort(key=lambda r: (len(r.path), r.host is not None), reverse=True)
        self.resources = tuple(resources)
        self.by_id = {r.as_id: r for r in resources}
        self._any_host = not any(r.host is not None for r in resources)

    def resolve(self, path: str, host: str | None) -> Resource | None:
        """The resource covering ``path`` (normalized), or None."""
        if self._any_host:
            for res in self.resources:
                if path == res.path or path.startswith(res.prefix):
                    return res
            return None
        req_host, req_port = split_host(host) if host else ("", None)
        for res in self.resources:
            if not (path == res.path or path.startswith(res.prefix)):
                continue
            if res.host is not None:
                if res.host != req_host:
                    continue
                if res.port is not None and req_port is not None and res.port != req_port:
                    continue
            return res
        return None
