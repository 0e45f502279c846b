"""``provisioning``: serve | token | device | group | admin | db | fleet."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import select
from sqlalchemy.exc import ArgumentError, OperationalError

from appliance_common import logging_setup
from provisioning import package_version
from provisioning.errors import ProvisioningError

UVICORN: dict[str, Any] = {
    "access_log": False,  # one line per mint is noise; the audit log has the facts
    "server_header": False,  # no software banner
    "proxy_headers": False,  # client addresses are not used, so X-Forwarded-For is not parsed
}


EX_USAGE = 64  # sysexits.h: the command was used wrongly
EX_DATAERR = 65  # sysexits.h: the input data was wrong (bad JSON, unknown name)
EX_UNAVAILABLE = 69  # sysexits.h: a service (the database) is unavailable
EX_CONFIG = 78
SERVICE_DATABASE_URL = "sqlite:////var/lib/provisioning/provisioning.db"
"""The database systemd/provisioning.service uses; the CLI's default too, so both agree."""


class UserError(ProvisioningError):
    """A mistake of the operator's: one line on stderr and an exit code, no traceback."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("provisioning").strip()
        raise UserError(EX_USAGE, f"{where + ': ' if where else ''}{message} (see --help)")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UserError as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("provisioning: interrupted", file=sys.stderr)
        return 130
    except ArgumentError as exc:  # a database URL that is not one
        print(f"provisioning: bad database URL: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OperationalError as exc:  # the database is down, or the URL points nowhere
        print(f"provisioning: cannot use the database: {exc.orig}", file=sys.stderr)
        return EX_UNAVAILABLE


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="provisioning", description=__doc__)
    parser.add_argument("--version", action="version", version=f"provisioning {package_version()}")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"default: $PROVISIONING_DATABASE_URL, else the service's {SERVICE_DATABASE_URL}",
    )
    parser.add_argument("--debug", action="store_true", help="log what happens (INFO and DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (standard key from the environment)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    token = sub.add_parser("token", help="enrollment tokens")
    token.add_argument("action", choices=["create"])
    token.add_argument("--group", default="default")
    token.add_argument("--uses", type=int, default=1, help="claim token: up to N devices")
    token.add_argument("--ttl", type=float, default=86400, help="seconds until it expires")
    device = sub.add_parser("device", help="devices (by name or id)")
    device.add_argument(
        "action",
        choices=["add", "list", "disable", "enable", "revoke", "rotate", "delete"],
        help="rotate: the device makes a new key at its next heartbeat",
    )
    device.add_argument("name", nargs="?", default="", help="device name or id")
    device.add_argument("--group", default="default")
    device.add_argument("--server-url", default="http://127.0.0.1:8080")
    device.add_argument("--json", action="store_true", help="list: one JSON array")
    adm = sub.add_parser("admin", help="admin credentials for the admin API and dashboard")
    adm.add_argument("action", choices=["create"])
    adm.add_argument("--label", default="")
    group = sub.add_parser("group", help="groups and their session profile")
    group.add_argument("action", choices=["set", "list", "delete"])
    group.add_argument("name", nargs="?", default="default")
    group.add_argument(
        "--profile", default=None, help="JSON session profile (checked against the openai types)"
    )
    group.add_argument("--limits", default=None, help='JSON limits, e.g. {"device_per_minute": 20}')
    group.add_argument("--model", default=None, help="the group's Realtime model (docs/models.md)")
    group.add_argument("--transcription-model", default=None, help="its input transcription model")
    group.add_argument("--all", action="store_true", help="with set --model: every group")
    group.add_argument("--force", action="store_true", help="set a model this server does not know")
    group.add_argument("--json", action="store_true", help="list: one JSON array")
    schema = sub.add_parser("db", help="database schema (Alembic migrations)")
    schema.add_argument("action", choices=["upgrade", "current"])
    schema.add_argument("--revision", default="head", help="upgrade to this revision")
    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    _fleet_parser(sub)
    return parser


def _database_url(flag: str | None, command: str) -> str:
    """--database-url, $PROVISIONING_DATABASE_URL, or the service's database. The service's
    default is never created by an admin command: a missing one is a clear error."""
    url = flag or os.environ.get("PROVISIONING_DATABASE_URL")
    if url:
        return url
    path = Path(SERVICE_DATABASE_URL.removeprefix("sqlite:///"))
    if command == "serve" or (command == "db" and path.parent.is_dir()) or path.exists():
        if not path.parent.is_dir():
            raise UserError(
                EX_CONFIG,
                f"{path.parent} does not exist: set PROVISIONING_DATABASE_URL "
                "(or install the service: scripts/install.sh --server)",
            )
        return SERVICE_DATABASE_URL
    raise UserError(
        EX_CONFIG,
        f"no database at {path} (the service's default): set PROVISIONING_DATABASE_URL or "
        "--database-url, or run `provisioning db upgrade` to create it",
    )


def _json_arg(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(EX_DATAERR, f"{flag}: not valid JSON ({exc})") from None


def _limits(text: str) -> dict[str, int]:
    from provisioning.store import DEFAULT_LIMITS

    limits = _json_arg("--limits", text)
    if not isinstance(limits, dict):
        raise UserError(EX_DATAERR, "--limits: must be a JSON object")
    for key, value in limits.items():
        if key not in DEFAULT_LIMITS:
            known = ", ".join(DEFAULT_LIMITS)
            raise UserError(EX_DATAERR, f"--limits: unknown limit {key!r} (known: {known})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(EX_DATAERR, f"--limits: {key} must be a whole number >= 0")
    return limits


def _profile(text: str) -> dict[str, Any]:
    from provisioning.profiles import ProfileError, validate

    profile = _json_arg("--profile", text)
    try:
        validate(profile)
    except ProfileError as exc:
        raise UserError(EX_DATAERR, f"--profile: {exc}") from None
    result: dict[str, Any] = profile
    return result


def _find_device(db: Any, ref: str) -> Any:
    """The device with this id, or else this name (names are unique)."""
    from provisioning.store import Device

    device = db.get(Device, ref) or db.scalars(select(Device).where(Device.name == ref)).first()
    if device is None:
        raise UserError(
            EX_DATAERR, f"no device named or with id {ref!r} (provisioning device list)"
        )
    return device


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        import shtab

        print(shtab.complete(parser, shell=args.shell))
        return 0
    from provisioning.server import Settings

    if args.command == "serve":  # journald with structured fields under systemd, redacted
        logging_setup.setup("INFO", identifier="provisioning")
    else:  # an admin command says what it did, nothing more, unless --debug
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.WARNING,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    # alembic names each of its plugins at INFO on every start; the migrations it runs stay
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from provisioning.models import SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"provisioning: bad setting {exc}", file=sys.stderr)
        return EX_CONFIG
    url = _database_url(args.database_url, args.command)
    settings = Settings(**{**settings.__dict__, "database_url": url})
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "db":
        return _db(settings.database_url, args.action, args.revision)
    if args.command == "device" and args.action != "list" and not args.name.strip():
        raise UserError(EX_USAGE, f"device {args.action}: give a device name or id")
    # checked before the database is opened
    profile = _profile(args.profile) if args.command == "group" and args.profile else None
    limits = _limits(args.limits) if args.command == "group" and args.limits else None
    from provisioning.store import Store

    if not args.debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    store = Store(settings.database_url)
    try:
        store.ensure_group("default")
        if args.command == "fleet":
            return _fleet(store, args)
        if args.command == "admin":
            print(store.create_admin(args.label))
            return 0
        if args.command == "token":
            print(_create_token(store, args.group, args.uses, args.ttl))
            return 0
        if args.command == "group":
            return _group(store, settings, args, profile, limits)
        return _device(store, args)
    finally:
        store.close()


def _create_token(store: Any, group: str, uses: int, ttl: float, label: str = "") -> str:
    try:
        token: str = store.create_token(group, uses, ttl, label=label)
    except KeyError:
        raise UserError(
            EX_DATAERR, f"no group {group!r} (provisioning group set {group} first)"
        ) from None
    return token


def _group(
    store: Any,
    settings: Any,
    args: argparse.Namespace,
    profile: Any,
    limits: dict[str, int] | None,
) -> int:
    from provisioning.models import group_findings
    from provisioning.store import Group

    if args.action == "set" and (args.model or args.transcription_model or args.all):
        return _move_groups(store, settings, args)
    if args.action == "set":
        saved = store.ensure_group(args.name, profile, limits)
        for finding in settings.lifecycle().findings(saved.profile or {}):
            print(f"provisioning: WARNING: {finding.describe(args.name)}", file=sys.stderr)
    elif args.action == "delete":
        outcome = store.delete_group(args.name)
        if outcome != "deleted":
            why = "no such group" if outcome == "missing" else "devices still belong to it"
            raise UserError(1, f"cannot delete group {args.name!r}: {why}")
    else:
        with store.session() as db:
            groups = [(g.name, g.profile, g.limits) for g in db.scalars(select(Group))]
        if args.json:
            rows = [{"name": n, "profile": p, "limits": lim} for n, p, lim in groups]
            print(json.dumps(rows, indent=2))
        for name, group_profile, _ in [] if args.json else groups:
            print(name, json.dumps(group_profile))
        for name, findings in group_findings(store, settings.lifecycle()).items():
            for finding in findings:
                print(f"provisioning: WARNING: {finding.describe(name)}", file=sys.stderr)
    return 0


def _device(store: Any, args: argparse.Namespace) -> int:
    from provisioning.admin import device_json
    from provisioning.store import Device

    name = args.name.strip()
    if args.action == "add":
        with store.session() as db:
            if db.scalars(select(Device.id).where(Device.name == name)).first():
                raise UserError(EX_DATAERR, f"a device named {name!r} exists already")
        secret = _create_token(store, args.group, 1, 86400, label=name)
        print(f"appliance enroll --server {args.server_url} --token {secret} --name {name}")
        return 0
    if args.action == "list":
        with store.session() as db:
            devices = [device_json(d) for d in db.scalars(select(Device).order_by(Device.name))]
        if args.json:
            print(json.dumps(devices, indent=2))
            return 0
        for d in devices:
            seen = time.strftime("%F %T", time.localtime(d["last_seen"])) if d["last_seen"] else "-"
            print(f"{d['id']}  {d['name']:<20} {d['group']:<10} {d['status']:<8} last seen {seen}")
        return 0
    with store.session() as db:
        device_id = _find_device(db, name).id
    if args.action == "rotate":
        outcome = store.request_rotation(device_id)
        if outcome == "revoked":
            raise UserError(EX_DATAERR, f"{name!r} is revoked: it has no key to rotate")
        ok = outcome == "requested"
    elif args.action == "delete":
        ok = store.delete_device(device_id)
    else:
        ok = store.set_device_state(device_id, args.action)
    if not ok:  # deleted meanwhile
        raise UserError(EX_DATAERR, f"no device {name!r}")
    return 0


def _serve(settings: Any, args: argparse.Namespace) -> int:
    import uvicorn

    from appliance_common.serving import BoundedHttp
    from provisioning.server import serve_app

    if not settings.openai_api_key:
        print("provisioning: PROVISIONING_OPENAI_API_KEY(_FILE) is not set", file=sys.stderr)
        return EX_CONFIG
    if args.workers > 1:
        # several processes: each builds the app from the environment (limits and
        # quotas are counted in the shared database, so they hold across workers)
        os.environ["PROVISIONING_DATABASE_URL"] = settings.database_url
        uvicorn.run(
            "provisioning.server:app_from_env",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            http=BoundedHttp,  # request heads bounded in size and time
            **UVICORN,
        )
        return 0
    from appliance_common.serving import listener

    # our own socket, so that Nagle is off even without uvloop (see ``listener``)
    app = serve_app(settings)
    sock = listener(args.host, args.port)
    host, port = sock.getsockname()[:2]
    logging.getLogger("provisioning").info("serving on http://%s:%d", host, port)
    uvicorn.Server(uvicorn.Config(app, http=BoundedHttp, **UVICORN)).run(sockets=[sock])
    return 0


def _move_groups(store: Any, settings: Any, args: argparse.Namespace) -> int:
    """``group set [NAME | --all] --model M [--transcription-model T]``: one transaction."""
    from provisioning.models import move_groups

    if args.profile or args.limits:
        raise UserError(EX_USAGE, "--model/--all do not combine with --profile/--limits")
    if not (args.model or args.transcription_model):
        raise UserError(EX_USAGE, "--all needs --model and/or --transcription-model")
    lifecycle = settings.lifecycle()
    for model in filter(None, (args.model, args.transcription_model)):
        shutdown = lifecycle.shutdown_date(model)
        if shutdown is not None and shutdown <= lifecycle.today():
            raise UserError(EX_DATAERR, f"{model} was shut down on {shutdown}")
        if shutdown is not None and (shutdown - lifecycle.today()).days <= lifecycle.warn_days:
            print(f"provisioning: WARNING: {model} shuts down on {shutdown}", file=sys.stderr)
        if not lifecycle.known(model) and not args.force:
            raise UserError(
                EX_DATAERR,
                f"unknown model {model!r} (a typo would silence the group); "
                "add --force to set it anyway",
            )
    try:
        changed = move_groups(
            store, None if args.all else [args.name], args.model, args.transcription_model
        )
    except KeyError as exc:
        raise UserError(EX_DATAERR, f"no group {exc.args[0]!r}") from None
    print(f"moved {len(changed)} group(s){': ' + ', '.join(changed) if changed else ''}")
    return 0


def _db(url: str, action: str, revision: str) -> int:
    from provisioning import migrations
    from provisioning.store import make_engine

    engine = make_engine(url)
    try:
        if action == "upgrade":
            print(f"database at revision {migrations.upgrade(engine, revision)}")
        else:
            with engine.connect() as conn:
                at = migrations.current(conn)
            print(f"database at revision {at or 'none'} (newest: {migrations.head()})")
    finally:
        engine.dispose()
    return 0


def _fleet_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="enrollment tokens and first-boot bundles for an inventory (docs/fleet.md)",
        description="For each device of the inventory (CSV or TOML: name, group, host, board) "
        "create an enrollment token and write a first-boot bundle; optionally push it over SSH. "
        "Re-runs skip devices already enrolled or bundled with a valid token.",
    )
    fleet.add_argument("inventory", type=Path)
    fleet.add_argument("--server-url", required=True, help="the URL devices enroll with")
    fleet.add_argument("--out", type=Path, default=Path("fleet-out"), help="bundles + manifest")
    fleet.add_argument("--ttl", type=float, default=7 * 86400, help="token lifetime, seconds")
    fleet.add_argument(
        "--min-valid", type=float, default=3600, help="replace tokens with less time left"
    )
    fleet.add_argument("--template", type=Path, default=None, help="appliance.toml to start from")
    fleet.add_argument("--only", action="append", default=[], help="just this device (repeat)")
    fleet.add_argument("--boot", type=Path, default=None, help="mounted boot partition")
    fleet.add_argument("--boot-mount", default="/boot/firmware", help="its path on the Pi")
    fleet.add_argument("--no-cmdline", action="store_true", help="leave cmdline.txt alone")
    fleet.add_argument("--push", action="store_true", help="copy over SSH and enroll there")
    fleet.add_argument("--jobs", type=int, default=8, help="parallel SSH pushes")
    fleet.add_argument("--ssh-user", default="", help="default login for hosts without user@")
    fleet.add_argument("--ssh-identity", default="", help="private key file (ssh -i)")
    fleet.add_argument("--ssh-option", action="append", default=[], help="ssh -o (repeat)")
    fleet.add_argument("--ssh-timeout", type=float, default=180.0)
    fleet.add_argument("--sudo", action=argparse.BooleanOptionalAction, default=None)
    fleet.add_argument("--remote-dir", default="/var/lib/appliance-firstboot")
    fleet.add_argument(
        "--remote-env", action="append", default=[], help="KEY=VALUE for the remote script"
    )


def _fleet(store: Any, args: argparse.Namespace) -> int:
    from provisioning import fleet

    ssh = fleet.SshOptions(
        user=args.ssh_user,
        identity=args.ssh_identity,
        options=tuple(args.ssh_option),
        remote_dir=args.remote_dir,
        remote_env=tuple(args.remote_env),
        sudo=args.sudo,
        timeout_s=args.ssh_timeout,
    )
    options = fleet.Options(
        server_url=args.server_url,
        out=args.out,
        ttl_s=args.ttl,
        min_valid_s=args.min_valid,
        template=args.template,
        boot=args.boot,
        boot_mount=args.boot_mount,
        hook_cmdline=not args.no_cmdline,
        push=args.push,
        jobs=args.jobs,
        ssh=ssh,
    )
    try:
        return fleet.main(store, args.inventory, options, args.only)
    except KeyboardInterrupt:
        print("provisioning fleet: interrupted; run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
