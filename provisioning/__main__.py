"""``provisioning``: serve | standin | token | device | group."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from sqlalchemy import select


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
    device.add_argument("action", choices=["add", "list", "disable", "enable", "revoke"])
    device.add_argument("name", nargs="?", default="")
    device.add_argument("--group", default="default")
    device.add_argument("--server-url", default="http://127.0.0.1:8080")
    adm = sub.add_parser("admin", help="admin credentials for the admin API and dashboard")
    adm.add_argument("action", choices=["create"])
    adm.add_argument("--label", default="")
    group = sub.add_parser("group", help="groups and their session profile")
    group.add_argument("action", choices=["set", "list"])
    group.add_argument("name", nargs="?", default="default")
    group.add_argument("--profile", default=None, help="JSON session profile")
    group.add_argument("--limits", default=None, help='JSON limits, e.g. {"device_per_minute": 20}')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    if args.database_url:
        settings = Settings(**{**settings.__dict__, "database_url": args.database_url})
    if args.command == "serve":
        import uvicorn

        from provisioning.server import create_app

        if not settings.openai_api_key:
            print("provisioning: PROVISIONING_OPENAI_API_KEY(_FILE) is not set", file=sys.stderr)
            return 78
        uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False)
        return 0
    from provisioning.store import Device, Group, Store

    store = Store(settings.database_url)
    store.ensure_group("default")
    if args.command == "admin":
        print(store.create_admin(args.label))
    elif args.command == "token":
        print(store.create_token(args.group, args.uses, args.ttl))
    elif args.command == "group" and args.action == "set":
        store.ensure_group(
            args.name,
            json.loads(args.profile) if args.profile else None,
            json.loads(args.limits) if args.limits else None,
        )
    elif args.command == "group":
        with store.session() as db:
            for g in db.scalars(select(Group)):
                print(g.name, json.dumps(g.profile))
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
        ok = store.set_device_state(args.name, args.action)
        if not ok:
            print(f"provisioning: no device {args.name!r}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
