"""The ``scopegate`` command: run, check, explain."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from config import ConfigError, load_config


def _check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{exc.source}: {len(exc.issues)} problem(s) found", file=sys.stderr)
        return 1
    source = args.config or "the default config"
    print(f"{source}: OK ({len(cfg.authorization_servers)} authorization server(s), {len(cfg.routes)} route(s), "
          f"{len(cfg.apps)} app(s), {len(cfg.users)} user(s))")
    return 0


def _run(args: argparse.Namespace) -> int:
    from proxy.server import run

    return run(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "explain":
        # explain has its own parser next to the policy engine it drives.
        from authz.explain import run_explain

        explained: int = run_explain(argv[1:])
        return explained
    parser = argparse.ArgumentParser(prog="scopegate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the proxy, core and ops listeners")
    run.add_argument("--config", help="YAML config file (default: the built-in demo config)")
    run.set_defaults(func=_run)
    check = commands.add_parser("check", help="validate a config file and exit 0 (valid) or 1 (invalid)")
    check.add_argument("--config", help="YAML config file (default: the built-in demo config)")
    check.set_defaults(func=_check)
    commands.add_parser("explain", help="show how the policy evaluates a request, issuing nothing "
                        "(scopegate explain --help)")
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
