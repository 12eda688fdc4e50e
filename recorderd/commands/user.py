"""`recorderd user add|list|set-role|set-agent|disable|enable|reset-totp|unlock|passwd`:
the console's users. The first admin comes from here; there is no default account.

Passwords are read from stdin (first line), never from the command line (which other local
users can see in /proc). Every change is an audit entry (actor: the OS user).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from recorderd.appliance import Appliance, cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from
from webadmin.users_store import ROLES, UserError, UserStore, list_users, totp_uri


def register(sub: argparse._SubParsersAction) -> None:
    user = sub.add_parser("user", help="console users: add, list, set-role, disable, ...")
    user_sub = user.add_subparsers(dest="user_command", required=True)

    add = user_sub.add_parser("add", help="a new console user (prints the otpauth:// URI when the role needs TOTP)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true", required=True,
                     help="read the password from the first line of stdin")
    add.add_argument("--agent-id", help="the agent id their calls carry (agents)")
    add.add_argument("--totp", action="store_true", help="a second factor for agent/qa too (always for admin/auditor)")
    add.set_defaults(run=cmd_add)

    listing = user_sub.add_parser("list", help="the users, their roles and states")
    listing.add_argument("--role", choices=ROLES)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list)

    set_role = user_sub.add_parser("set-role", help="change a user's role (ends their sessions)")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=ROLES)
    set_role.set_defaults(run=cmd_set_role)

    set_agent = user_sub.add_parser("set-agent", help="change a user's agent id ('' removes it)")
    set_agent.add_argument("name")
    set_agent.add_argument("agent_id")
    set_agent.set_defaults(run=cmd_set_agent)

    for name, helptext, func in (("disable", "disable a user (ends their sessions)", cmd_disable),
                                 ("enable", "enable a disabled user", cmd_enable),
                                 ("reset-totp", "a new TOTP secret (prints the otpauth:// URI)", cmd_reset_totp),
                                 ("unlock", "clear a lockout after failed logins", cmd_unlock)):
        command = user_sub.add_parser(name, help=helptext)
        command.add_argument("name")
        command.set_defaults(run=func)

    passwd = user_sub.add_parser("passwd", help="set a user's password (ends their sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", required=True)
    passwd.set_defaults(run=cmd_passwd)


def _password_from_stdin() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("user: no password on stdin")
    return password


def _change(args: argparse.Namespace, what: str, change: Callable[[UserStore, Appliance], object]) -> int:
    """Run ``change(store, app)``; audit it; exit 1 with the reason when refused."""
    with appliance_from(args, recover=False) as app:
        store = UserStore(app.catalog)
        try:
            result = change(store, app)
        except UserError as err:
            app.audit.append(cli_actor(), ROLE, "user.manage", f"user:{args.name}", "failed", f"{what}: {err}")
            print(f"recorderd: user {what}: {err}", file=sys.stderr)
            return EXIT_PROBLEM
        app.audit.append(cli_actor(), ROLE, "user.manage", f"user:{args.name}", "ok", what)
    if isinstance(result, str):
        print(f"TOTP key URI for {args.name} (give it to them over a trusted channel; shown once):")
        print(totp_uri(args.name, result))
    return EXIT_OK


def cmd_add(args: argparse.Namespace) -> int:
    password = _password_from_stdin()
    min_length = _min_length(args)

    def add(store: UserStore, _app: Appliance) -> str | None:
        _user, secret = store.create(args.name, args.role, password, agent_id=args.agent_id, totp=args.totp,
                                     min_password_length=min_length)
        print(f"user {args.name} ({args.role}) created")
        return secret

    return _change(args, f"created with role {args.role}", add)


def _min_length(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        return int(app.config["web"]["min_password_length"])


def cmd_list(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        users = [u.public() for u in list_users(app.catalog, args.role)]
        app.audit.append(cli_actor(), ROLE, "user.list", "users", "ok", detail={"role": args.role})
    if args.json:
        print(json.dumps(users, indent=2))
        return EXIT_OK
    for u in users:
        flags = [flag for flag, on in (("totp", u["totp"]), ("disabled", u["disabled"]),
                                       ("locked", bool(u["locked_until"]))) if on]
        print(f"{u['username']:<24} {u['role']:<8} {u['agent_id'] or '-':<16} {' '.join(flags)}")
    return EXIT_OK


def cmd_set_role(args: argparse.Namespace) -> int:
    return _change(args, f"role set to {args.role}", lambda store, _app: store.set_role(args.name, args.role))


def cmd_set_agent(args: argparse.Namespace) -> int:
    agent_id = args.agent_id or None
    return _change(args, f"agent id set to {agent_id}",
                   lambda store, _app: store.set_agent_id(args.name, agent_id))


def cmd_disable(args: argparse.Namespace) -> int:
    return _change(args, "disabled", lambda store, _app: store.set_disabled(args.name, True))


def cmd_enable(args: argparse.Namespace) -> int:
    return _change(args, "enabled", lambda store, _app: store.set_disabled(args.name, False))


def cmd_reset_totp(args: argparse.Namespace) -> int:
    return _change(args, "new TOTP secret", lambda store, _app: store.reset_totp(args.name))


def cmd_unlock(args: argparse.Namespace) -> int:
    return _change(args, "unlocked", lambda store, _app: store.unlock(args.name))


def cmd_passwd(args: argparse.Namespace) -> int:
    password = _password_from_stdin()
    min_length = _min_length(args)
    return _change(args, "password set",
                   lambda store, _app: store.set_password(args.name, password, min_password_length=min_length))
