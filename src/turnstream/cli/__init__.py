"""``turnstream``: serve, relay, token, tail, projections, schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from turnstream.cli.common import settings_of, start_logging
from turnstream.cli.serve import cmd_relay, cmd_serve
from turnstream.domain.durations import duration_s
from turnstream.settings import SettingsError


def parse_ttl(text: str) -> int:
    seconds = duration_s(text)
    if seconds is None:
        msg = f"bad --ttl {text!r}: use seconds or a number with s, m, h or d (e.g. 1h)"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def cmd_token(args: argparse.Namespace) -> int:
    from turnstream.http.auth import mint, resolve_secret

    settings = settings_of(args)
    secret, _ = resolve_secret(settings.server.jwt_secret, settings.server.data_dir)
    print(
        mint(
            secret,
            tenant=args.tenant,
            user=args.user,
            ttl_s=args.ttl,
            guest=args.guest,
            admin=args.admin,
        )
    )
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the relayed events as JSON lines (see :mod:`turnstream.bus.tail`)."""
    from turnstream.bus.tail import StartAt, run

    settings = settings_of(args)
    start = StartAt(seq=args.from_seq, time=args.since, position=args.position)
    return run(settings, subject=args.subject, start=start, follow=args.follow)


def _since(text: str) -> object:
    from turnstream.bus.tail import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sequence(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        msg = f"{text!r} is not a number from 1 up"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the NATS envelope (docs/nats-envelope.schema.json)."""
    import json

    from turnstream.bus.envelope import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_projections(args: argparse.Namespace) -> int:
    """Operate the projections (see :mod:`turnstream.cli.projections`)."""
    from turnstream.cli.projections import main as projections_main

    settings = settings_of(args)
    start_logging(settings)
    return projections_main(
        settings, args.action, args.name, as_json=args.json, supervised=args.supervised
    )


def _projection_name(text: str) -> str:
    from turnstream.projections.registry import PROJECTIONS

    if text not in PROJECTIONS:
        msg = f"{text!r} is not a projection; choose from {', '.join(PROJECTIONS)}"
        raise argparse.ArgumentTypeError(msg)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstream", description="An event-sourced chat backend for LLM chat apps."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (HTTP, turn runners)")
    serve.add_argument("--host", help="bind address (TURNSTREAM_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (TURNSTREAM_PORT, default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        help="HTTP processes on the one port (TURNSTREAM_WORKERS, default 1)",
    )
    serve.add_argument("--data-dir", type=Path, help="data folder (TURNSTREAM_DATA_DIR)")
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a worker's socket
    serve.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    relay = sub.add_parser(
        "relay", help="run only the relay: every stored event onto NATS JetStream"
    )
    relay.add_argument("--data-dir", type=Path, help="data folder (TURNSTREAM_DATA_DIR)")
    relay.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    relay.set_defaults(func=cmd_relay)

    token = sub.add_parser("token", help="print a bearer token signed with serve's secret")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument(
        "--ttl", type=parse_ttl, default=3600, help="lifetime, e.g. 3600, 30m, 1h, 7d"
    )
    token.add_argument("--guest", action="store_true")
    token.add_argument("--admin", action="store_true")
    token.add_argument("--data-dir", type=Path, help="data folder (TURNSTREAM_DATA_DIR)")
    token.set_defaults(func=cmd_token)

    tail = sub.add_parser(
        "tail",
        help="print the events relayed to NATS as JSON lines",
        description="Print the relayed events, one JSON envelope a line, from the stream's"
        " first message or from --from-seq, --since or --position; with --follow, go on"
        " until SIGINT/SIGTERM. Reads TURNSTREAM_NATS_URL, TURNSTREAM_NATS_STREAM and"
        " TURNSTREAM_NATS_SUBJECT_PREFIX.",
    )
    tail.add_argument("--subject", help="a subject filter (default: <prefix>.>)")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=_sequence, metavar="N", help="start at stream sequence N")
    start.add_argument(
        "--since", type=_since, metavar="WHEN", help="30s, 10m, 2h, 1d, or an ISO-8601 time"
    )
    start.add_argument(
        "--position",
        type=_sequence,
        metavar="P",
        help="start at the first event whose Turnstream-Position is P or more",
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    tail.add_argument("--data-dir", type=Path, help="data folder (TURNSTREAM_DATA_DIR)")
    tail.set_defaults(func=cmd_tail)

    projections = sub.add_parser(
        "projections",
        help="status, rebuild or run the projections (message tree, conversation list, usage)",
        description="status: each projection's position, the log's head and the lag."
        " rebuild [NAME]: rebuild from the first event (all projections without NAME) while"
        " the service keeps serving the old view, then switch to the new one."
        " run [NAME]: keep the projections up to date in this process.",
    )
    projections.add_argument("action", choices=["status", "rebuild", "run"])
    projections.add_argument("name", nargs="?", type=_projection_name, help="one projection")
    projections.add_argument("--json", action="store_true", help="status as JSON lines")
    projections.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    projections.add_argument("--data-dir", type=Path, help="data folder (TURNSTREAM_DATA_DIR)")
    projections.set_defaults(func=cmd_projections)

    schema = sub.add_parser("schema", help="print the JSON Schema of the NATS envelope")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"turnstream: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
