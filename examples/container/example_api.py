"""An example API for the sidecar topology: it trusts whatever reaches it, because only scopegate can.

It binds 127.0.0.1 inside the pod (the pod's containers share one network namespace), so nothing outside
the pod reaches it except through scopegate's proxy port. Every request it receives is one JSON line on
stdout, so a test can tell that a refused request never arrived. Standard library only: it runs on the
scopegate image with ``--entrypoint /opt/scopegate/bin/python``.

    python example_api.py [--host 127.0.0.1] [--port 9000]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Handler(BaseHTTPRequestHandler):
    server_version = "example-api"

    def _answer(self) -> None:
        seen = {"method": self.command, "path": self.path,
                "subject": self.headers.get("X-Scopegate-Subject"),
                "clientId": self.headers.get("X-Scopegate-Client-Id"),
                "scopes": self.headers.get("X-Scopegate-Scopes")}
        print(json.dumps({"received": seen}), flush=True)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the JSON line above is the log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # PID 1 in a container: SIGTERM must end it, not wait for SIGKILL

    signal.signal(signal.SIGTERM, stop)
    print(f"example API listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
