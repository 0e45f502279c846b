"""``provisioning``: serve | standin | token | device | group | admin | db | fleet."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from appliance import logging_setup

UVICORN: dict[str, Any] = {
    "access_log": False,  # one line per mint is noise; the audit log has the facts
    "server_header": False,  # no software banner
    "proxy_headers": False,  # client addresses are not used, so X-Forwarded-For is not parsed
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["standin"]:
        from provisioning.standin.cli import main as standin

        return standin(argv[1:])
    from provisioning.server import Settings

    parser = argparse.ArgumentParser(prog="provisioning", description=__doc__)
    parser.add_argument("--database-url", default=None, help="default: $PROVISIONING_DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (standard key from the environment)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    sub.add_parser("standin", help="run the local Realtime stand-in (see --help there)")
    token = sub.add_parser("token", help="enrollment tokens")
    token.add_argument("action", choices=["create"])
    token.add_argument("--group", default="default")
    token.add_argument("--uses", type=int, default=1, help="claim token: up to N devices")
    token.add_argument("--ttl", type=float, default=86400, help="seconds until it expires")
    device = sub.add_parser("device", help="devices")
    device.add_argument("action", choices=["add", "list", "disable", "enable", "revoke", "delete"])
    device.add_argument("name", nargs="?", default="")
    device.add_argument("--group", default="default")
    device.add_argument("--server-url", default="http://127.0.0.1:8080")
    adm = sub.add_parser("admin", help="admin credentials for the admin API and dashboard")
    adm.add_argument("action", choices=["create"])
    adm.add_argument("--label", default="")
    group = sub.add_parser("group", help="groups and their session profile")
    group.add_argument("action", choices=["set", "list", "delete"])
    group.add_argument("name", nargs="?", default="default")
    group.add_argument("--profile", default=None, help="JSON session profile")
    group.add_argument("--limits", default=None, help='JSON limits, e.g. {"device_per_minute": 20}')
    group.add_argument("--model", default=None, help="the group's Realtime model (docs/models.md)")
    group.add_argument("--transcription-model", default=None, help="its input transcription model")
    group.add_argument("--all", action="store_true", help="with set --model: every group")
    group.add_argument("--force", action="store_true", help="set a model this server does not know")
    schema = sub.add_parser("db", help="database schema (Alembic migrations)")
    schema.add_argument("action", choices=["upgrade", "current"])
    schema.add_argument("--revision", default="head", help="upgrade to this revision")
    _fleet_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":  # journald with structured fields under systemd, redacted
        logging_setup.setup("INFO", identifier="provisioning")
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    # alembic names each of its plugins at INFO on every start; the migrations it runs stay
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from provisioning.models import SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"provisioning: bad setting {exc}", file=sys.stderr)
        return 78
    if args.database_url:
        settings = Settings(**{**settings.__dict__, "database_url": args.database_url})
    if args.command == "serve":
        import uvicorn

        from provisioning.server import serve_app
        from provisioning.serving import BoundedHttp

        if not settings.openai_api_key:
            print("provisioning: PROVISIONING_OPENAI_API_KEY(_FILE) is not set", file=sys.stderr)
            return 78
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
        from provisioning.serving import listener

        # our own socket, so that Nagle is off even without uvloop (see ``listener``)
        app = serve_app(settings)
        sock = listener(args.host, args.port)
        host, port = sock.getsockname()[:2]
        logging.getLogger("provisioning").info("serving on http://%s:%d", host, port)
        config = uvicorn.Config(app, http=BoundedHttp, **UVICORN)
        uvicorn.Server(config).run(sockets=[sock])
        return 0
    if args.command == "db":
        return _db(settings.database_url, args.action, args.revision)
    from provisioning.live_relay import LIVE, backend_of, check_live_profile
    from provisioning.store import Device, Group, Store

    logging.getLogger("alembic").setLevel(logging.WARNING)  # `provisioning db` shows its steps
    store = Store(settings.database_url)
    store.ensure_group("default")
    if args.command == "fleet":
        return _fleet(store, args)
    if args.command == "admin":
        print(store.create_admin(args.label))
    elif args.command == "token":
        print(store.create_token(args.group, args.uses, args.ttl))
    elif (
        args.command == "group"
        and args.action == "set"
        and (args.model or args.transcription_model or args.all)
    ):
        return _move_groups(store, settings, args)
    elif args.command == "group" and args.action == "set":
        profile = json.loads(args.profile) if args.profile else None
        if profile is not None and backend_of(profile) == LIVE:
            try:
                check_live_profile(profile)
            except ValueError as exc:
                print(f"provisioning: --profile: Live profile: {exc}", file=sys.stderr)
                return 2
        saved = store.ensure_group(
            args.name,
            profile,
            json.loads(args.limits) if args.limits else None,
        )
        for finding in settings.lifecycle().findings(saved.profile or {}):
            print(f"provisioning: WARNING: {finding.describe(args.name)}", file=sys.stderr)
    elif args.command == "group" and args.action == "delete":
        outcome = store.delete_group(args.name)
        if outcome != "deleted":
            why = "no such group" if outcome == "missing" else "devices still belong to it"
            print(f"provisioning: cannot delete group {args.name!r}: {why}", file=sys.stderr)
            return 1
    elif args.command == "group":
        from provisioning.models import group_findings

        with store.session() as db:
            for g in db.scalars(select(Group)):
                print(g.name, json.dumps(g.profile))
        for name, findings in group_findings(store, settings.lifecycle()).items():
            for finding in findings:
                print(f"provisioning: WARNING: {finding.describe(name)}", file=sys.stderr)
    elif args.action == "add":
        secret = store.create_token(args.group, 1, 86400, label=args.name)
        print(f"appliance enroll --server {args.server_url} --token {secret} --name {args.name}")
    elif args.action == "list":
        with store.session() as db:
            for d in db.scalars(select(Device)):
                seen = time.strftime("%F %T", time.localtime(d.last_seen)) if d.last_seen else "-"
                status = "revoked" if d.revoked else ("enabled" if d.enabled else "disabled")
                print(f"{d.id}  {d.name:<20} {d.group:<10} {status:<8} last seen {seen}")
    else:
        if args.action == "delete":
            ok = store.delete_device(args.name)
        else:
            ok = store.set_device_state(args.name, args.action)
        if not ok:
            print(f"provisioning: no device {args.name!r}", file=sys.stderr)
            return 1
    return 0


def _move_groups(store: Any, settings: Any, args: argparse.Namespace) -> int:
    """``group set [NAME | --all] --model M [--transcription-model T]``: one transaction."""
    from provisioning.models import move_groups

    if args.profile or args.limits:
        print("provisioning: --model/--all do not combine with --profile/--limits", file=sys.stderr)
        return 2
    if not (args.model or args.transcription_model):
        print("provisioning: --all needs --model and/or --transcription-model", file=sys.stderr)
        return 2
    lifecycle = settings.lifecycle()
    for model in filter(None, (args.model, args.transcription_model)):
        shutdown = lifecycle.shutdown_date(model)
        if shutdown is not None and shutdown <= lifecycle.today():
            print(f"provisioning: {model} was shut down on {shutdown}", file=sys.stderr)
            return 1
        if shutdown is not None and (shutdown - lifecycle.today()).days <= lifecycle.warn_days:
            print(f"provisioning: WARNING: {model} shuts down on {shutdown}", file=sys.stderr)
        if not lifecycle.known(model) and not args.force:
            print(
                f"provisioning: unknown model {model!r} (a typo would silence the group); "
                "add --force to set it anyway",
                file=sys.stderr,
            )
            return 1
    try:
        changed = move_groups(
            store, None if args.all else [args.name], args.model, args.transcription_model
        )
    except KeyError as exc:
        print(f"provisioning: no group {exc.args[0]!r}", file=sys.stderr)
        return 1
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


def _fleet_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
