"""Command line: ``dfproxy run`` and ``dfproxy validate`` (also ``python -m dfproxy``)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys
from collections.abc import Sequence

from dfproxy import __version__
from dfproxy.access import cli as access_cli
from dfproxy.access_log import FLUSH_INTERVAL
from dfproxy.config.model import ProxyConfig, default_config
from dfproxy.dns.resolver import ResolverOptions


def host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[::1]:PORT``) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    value = int(port)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfproxy", description="HTTP dynamic forward proxy")
    parser.add_argument("--version", action="version", version=f"dfproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE|DIR",
        help="Gloo Gateway/VirtualService YAML (file or folder; repeatable)",
    )
    run.add_argument(
        "--listen",
        type=host_port,
        metavar="HOST:PORT",
        help="address of the (first) proxy listener (default 127.0.0.1:8080)",
    )
    run.add_argument(
        "--admin",
        default="127.0.0.1:19000",
        metavar="HOST:PORT|none",
        help="admin address, or 'none' (default 127.0.0.1:19000)",
    )
    run.add_argument(
        "--admin-allow-remote",
        action="store_true",
        help="allow an admin address that is not loopback (the admin port has no auth)",
    )
    run.add_argument(
        "--dns-resolver",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="DNS server for c-ares instead of the system's (repeatable)",
    )
    run.add_argument("--workers", type=int, default=1, help="worker processes (SO_REUSEPORT)")
    run.add_argument(
        "--log-level",
        default="info",
        choices=["trace", "debug", "info", "warning", "error", "critical"],
    )
    run.add_argument("--access-log", metavar="PATH|-", help="write an access log ('-' = stdout)")
    run.add_argument("--access-log-format", choices=["envoy", "json"], default="envoy")
    # Hidden: the test suite flushes often so that it need not wait a second per log check.
    run.add_argument(
        "--access-log-flush-interval", type=float, default=FLUSH_INTERVAL, help=argparse.SUPPRESS
    )
    run.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    run.add_argument(
        "--ports-file",
        metavar="PATH",
        help="write the bound ports as JSON once listening (for port 0)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long SIGTERM waits for in-flight requests (default 15)",
    )
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    access_cli.add_arguments(run)
    validate = sub.add_parser("validate", help="check configuration files and exit")
    validate.add_argument("files", nargs="+", metavar="FILE|DIR")
    return parser


def load_config(args: argparse.Namespace) -> ProxyConfig:
    """The configuration to run: the files given, else the embedded default; CLI overrides."""
    if args.config:
        from dfproxy.config.gloo import load_paths

        config = load_paths(args.config)
    else:
        config = default_config()
    # The embedded default's secure destination rules, and the --allow-* flags.
    access_cli.apply(config, not args.config, args.allow_destination, args.allow_connect_port)
    if args.listen:
        first = config.listeners[0]
        first.host, first.port = args.listen
    if args.dns_resolver:
        for spec in config.listeners:
            if spec.dfp is not None:
                spec.dfp.resolver = dataclasses.replace(
                    spec.dfp.resolver, servers=tuple(args.dns_resolver)
                )
    return config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.DEBUG if level == "trace" else getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from dfproxy import loop as loops
    from dfproxy.server import Server, Settings

    configure_logging(args.log_level)
    log = logging.getLogger("dfproxy")
    try:
        config = load_config(args)
    except Exception as exc:  # every config error is reported, never a traceback
        log.error("invalid configuration:\n%s", exc)
        return 2
    admin = None if args.admin == "none" else host_port(args.admin)
    if admin is not None and not args.admin_allow_remote and not _is_loopback(admin[0]):
        log.error(
            "admin address %s is not loopback and the admin port has no authentication; "
            "pass --admin-allow-remote to expose it anyway",
            args.admin,
        )
        return 2
    if args.workers > 1 and args.worker_index is None:
        from dfproxy.workers import Supervisor

        return Supervisor(args, config, admin).run()
    loader = None
    if args.config:

        def loader() -> ProxyConfig:
            return load_config(args)

    if args.worker_index is not None:
        from dfproxy.workers import die_with_supervisor

        die_with_supervisor()
    settings = Settings(
        loader=loader,
        watch_paths=list(args.config),
        admin=admin,
        access_log=args.access_log,
        access_log_format=args.access_log_format,
        access_log_flush_interval=args.access_log_flush_interval,
        ports_file=args.ports_file,
        drain_timeout=args.drain_timeout,
        reuse_port=args.worker_index is not None,
        worker_index=args.worker_index,
        argv=sys.argv,
    )
    return loops.run(Server(settings, config).serve(), args.event_loop)


def cmd_validate(args: argparse.Namespace) -> int:
    from dfproxy.config.gloo import ConfigError, load_paths, summary

    try:
        config = load_paths(args.files)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    return cmd_validate(args)


__all__ = ["ResolverOptions", "main"]
