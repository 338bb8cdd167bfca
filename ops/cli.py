"""`mailbus`: the operator's command.

mailbus up --config FILE [--data-dir DIR]   run embedded NATS and all services
mailbus config check FILE [--non-default]   validate, print the effective config
mailbus config get KEY [--config FILE]      one key's effective value
mailbus config apply [--shadow] FILE|history|diff A B|rollback REV|status|shadow-report|promote
                                            configuration revisions, live (ops.configctl)
mailbus user hash                           print the argon2id hash of a password
mailbus queue list|show|retry|hold|release|delete   the delivery queue (ops.queuectl)
mailbus blocks list [--history]|remove ADDRESS      blocked client addresses (ops.blocksctl)
mailbus check --client IP --from S --to R   what policy would answer, counting nothing
mailbus sendmail [-t] [-i] [-f S] [RCPT...]  send a message from stdin (ops.sendmail)
mailbus migrate [--check]                   create/update the bus's streams (ops.migrate)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from libs.common.config import ConfigError, load_config


def _cmd_up(args: argparse.Namespace) -> int:
    from libs.common.runtime.service import setup_logging
    from ops.up import up

    setup_logging(args.log_level or "INFO")
    if args.log_level:
        os.environ["MAILBUS_LOG_LEVEL"] = args.log_level  # for every child
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    return up(args.config, config, args.data_dir)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from libs.common.config.cli import config_check

    return config_check(args.file, args.non_default)


def _cmd_config_get(args: argparse.Namespace) -> int:
    from libs.common.config.cli import config_get

    if not args.config:
        print("mailbus config get: --config FILE (or MAILBUS_CONFIG) is required", file=sys.stderr)
        return 2
    return config_get(args.config, args.key)


def _cmd_user_hash(args: argparse.Namespace) -> int:
    from libs.common.mail.userhash import user_hash_command

    return user_hash_command()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailbus", description="mailbus MTA")
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="run embedded NATS (when nats.url is empty) and all services")
    p_up.add_argument("--config", required=True)
    p_up.add_argument("--data-dir", default="./var")
    p_up.add_argument("--log-level", default=None, help="overrides logging.level in every service")
    p_up.set_defaults(func=_cmd_up)

    p_cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = p_cfg.add_subparsers(dest="config_command", required=True)
    p_check = cfg_sub.add_parser("check", help="validate FILE and print the effective config")
    p_check.add_argument("file")
    p_check.add_argument(
        "--non-default", action="store_true", help="only what differs from the defaults"
    )
    p_check.set_defaults(func=_cmd_config_check)
    p_get = cfg_sub.add_parser("get", help="one key's effective value, e.g. queue.retry_interval")
    p_get.add_argument("key")
    p_get.add_argument("--config", default=os.environ.get("MAILBUS_CONFIG"))
    p_get.set_defaults(func=_cmd_config_get)

    from ops.configctl import add_parser as add_revision_parser

    add_revision_parser(cfg_sub)
    from ops.configctl import add_status_parser

    add_status_parser(sub)

    p_user = sub.add_parser("user", help="local account tools")
    user_sub = p_user.add_subparsers(dest="user_command", required=True)
    p_hash = user_sub.add_parser(
        "hash", help="read a password (no echo, or from stdin) and print its argon2id hash"
    )
    p_hash.set_defaults(func=_cmd_user_hash)

    from ops.queuectl import add_parser as add_queue_parser

    add_queue_parser(sub)

    from ops.blocksctl import add_parser as add_blocks_parser

    add_blocks_parser(sub)

    from ops.checkctl import add_parser as add_check_parser

    add_check_parser(sub)

    from ops.sendmail import add_parser as add_sendmail_parser

    add_sendmail_parser(sub)

    from ops.migrate import add_parser as add_migrate_parser

    add_migrate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and Path(sys.argv[0]).name == "sendmail":
        # Called through a `sendmail` symlink (/usr/sbin/sendmail -> .venv/bin/mailbus):
        # its arguments are sendmail's.
        argv = ["sendmail", *sys.argv[1:]]
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
