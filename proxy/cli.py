"""The ``scopegate`` command: run, check, explain, inject."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

# The rest is imported when a command needs it: ``scopegate run`` ignores SIGHUP as its first act (main), and
# importing the config models (pydantic) first would leave a SIGHUP a second in which it still kills the process.


def _check(args: argparse.Namespace) -> int:
    from config import ConfigError, load_config

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


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of workers nor auto") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"{count} workers: from 1 to 256") from None
    return count


def _run(args: argparse.Namespace) -> int:
    from proxy.server import run

    return run(args.config, args.workers)


def _inject(args: argparse.Namespace) -> int:
    # Only the injector's own subpackage: the webhook process loads nothing of the gate (DESIGN §8).
    from proxy.inject.patch import InjectorSettings
    from proxy.inject.server import run

    settings = InjectorSettings(image=args.image, config_map=args.config_map, secret=args.secret,
                                proxy_port=args.proxy_port,
                                ops_port=args.ops_port, core_port=args.core_port, run_as_user=args.run_as_user)
    return run(settings, cert_file=args.cert, key_file=args.key, listen=args.listen, ops=args.ops)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        # A SIGHUP before the handlers are installed (start-up takes a second or more) must not kill the process:
        # ignored until then; the file is read after this anyway. Workers inherit it until their loop's handler.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if argv and argv[0] == "explain":
        # explain has its own parser next to the policy engine it drives.
        from authz.explain import run_explain

        explained: int = run_explain(argv[1:])
        return explained
    parser = argparse.ArgumentParser(prog="scopegate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the proxy, core and ops listeners")
    run.add_argument("--config", help="YAML config file (default: the built-in demo config)")
    run.add_argument("--workers", type=_workers, help="worker processes sharing the ports (N, or auto: one per "
                     "usable CPU); overrides the config's workers (default 1)")
    run.set_defaults(func=_run)
    check = commands.add_parser("check", help="validate a config file and exit 0 (valid) or 1 (invalid)")
    check.add_argument("--config", help="YAML config file (default: the built-in demo config)")
    check.set_defaults(func=_check)
    inject = commands.add_parser("inject", help="serve the sidecar injector (a mutating admission webhook)")
    from proxy.inject.patch import InjectorSettings

    defaults = InjectorSettings()
    inject.add_argument("--cert", required=True, help="PEM certificate file (reloaded when it changes)")
    inject.add_argument("--key", required=True, help="PEM private key file (reloaded when it changes)")
    inject.add_argument("--listen", default="0.0.0.0:8443", help="webhook address (default: %(default)s)")
    inject.add_argument("--ops", default="0.0.0.0:9090", help="health and metrics address (default: %(default)s)")
    inject.add_argument("--image", default=defaults.image, help="sidecar image (default: %(default)s; "
                        "scopegate.io/image overrides it per pod)")
    inject.add_argument("--config-map", default=defaults.config_map, help="ConfigMap with the sidecar's "
                        "scopegate.yaml (default: %(default)s; scopegate.io/config overrides it per pod)")
    inject.add_argument("--secret", default=defaults.secret, help="Secret whose keys become the sidecar's "
                        "environment, optional (default: %(default)s; scopegate.io/secret overrides it per pod)")
    inject.add_argument("--proxy-port", type=int, default=defaults.proxy_port, help="sidecar proxy port "
                        "(default: %(default)s; scopegate.io/proxy-port)")
    inject.add_argument("--ops-port", type=int, default=defaults.ops_port, help="sidecar ops port "
                        "(default: %(default)s; scopegate.io/ops-port)")
    inject.add_argument("--core-port", type=int, default=defaults.core_port, help="sidecar core port "
                        "(default: %(default)s; scopegate.io/core-port)")
    inject.add_argument("--run-as-user", type=int, default=defaults.run_as_user,
                        help="the sidecar image's numeric user (default: %(default)s)")
    inject.set_defaults(func=_inject)
    commands.add_parser("explain", help="show how the policy evaluates a request, issuing nothing "
                        "(scopegate explain --help)")
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
