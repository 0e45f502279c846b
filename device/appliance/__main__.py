"""``appliance``: run | enroll | devices | check.

``appliance run`` never crash-loops: a startup failure restarting cannot fix (config,
identity files, GPIO) exits 78 (``RestartPreventExitStatus=78``) with one line naming the
file or key; a fault that can heal (no microphone yet, server unreachable) keeps the daemon
up: READY, ERROR or OFFLINE on the LED, the reason in STATUS and heartbeats, retrying.
SIGHUP reloads: the daemon stops cleanly (the call hung up), then re-executes itself with the
same arguments, so it reads the configuration afresh (``ExecReload=`` in the unit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import package_version
from appliance.errors import EX_CONFIG, ApplianceError, ConfigError

if TYPE_CHECKING:
    from appliance.app import App
    from appliance.realtime.provisioning_keys import ProvisioningKeySource
    from appliance.service import Notifier

log = logging.getLogger("appliance")
RELOAD = -1
"""What ``_run`` returns after SIGHUP: re-execute to read the configuration afresh."""


async def _run(config_path: Path | None) -> int:
    from appliance import config as cfg
    from appliance.app import App
    from appliance.devicetools import load_entry_point_tools
    from appliance.heartbeat import heartbeat_loop
    from appliance.identity import Identity
    from appliance.realtime.keys import CachedKeySource
    from appliance.realtime.provisioning_keys import ProvisioningKeySource
    from appliance.realtime.tools import builtin_registry
    from appliance.service import Notifier, watchdog_loop
    from appliance.wiring import make_audio, make_frontend, make_gpio
    from appliance_common import logging_setup

    config = cfg.load(config_path)
    logging_setup.setup(config.logging.level)
    notifier = Notifier()
    try:
        identity = Identity.load(config.device.state_dir)
    except FileNotFoundError:
        raise ConfigError(
            "device.state_dir",
            f"no device identity in {config.device.state_dir}: run 'appliance enroll' first",
        ) from None
    source, sink = make_audio(config)
    provisioning = ProvisioningKeySource(identity, timeout_s=config.provisioning.timeout_s)
    keys = CachedKeySource(provisioning, clock=identity.clock.now)  # expiry in server time
    frontend = make_frontend(config, source.format)
    tools = builtin_registry()
    extra = load_entry_point_tools(tools)
    if extra:
        log.info("user tools: %s", ", ".join(extra))
    app = App(
        config,
        source=source,
        sink=sink,
        keys=keys,
        tools=tools,
        frontend=frontend,
        relay=provisioning,  # GPT-Live sessions, when the device's group uses that backend
        probe=provisioning.probe,
    )
    app.on_state = lambda _state: notifier.status(app.status_text())
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def _reload() -> None:
        log.info("SIGHUP: reloading (a clean stop, then the daemon starts afresh)")
        notifier.reloading()
        reload.set()
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, _reload)
    runner = asyncio.create_task(app.run(stop))
    await asyncio.sleep(0.05)
    try:
        leds, button = make_gpio(config, app.post)
    except ConfigError:
        stop.set()
        await runner
        raise
    app.attach_leds(leds)
    watchdog = asyncio.create_task(watchdog_loop(notifier, lambda: app.last_audio))
    tasks = [watchdog]
    if config.provisioning.heartbeat_s > 0:
        beats = heartbeat_loop(
            provisioning,
            app,
            config.provisioning.heartbeat_s,
            config.provisioning.report_transcripts,
        )
        tasks.append(asyncio.create_task(beats, name="heartbeat"))
    ready = asyncio.create_task(_announce_ready(app, notifier, provisioning))
    try:
        await stop.wait()
        if not reload.is_set():
            notifier.stopping()
        await runner
    finally:
        for task in (*tasks, ready):
            task.cancel()
        if button is not None:
            button.close()
    return RELOAD if reload.is_set() else 0


async def _announce_ready(
    app: App, notifier: Notifier, provisioning: ProvisioningKeySource
) -> None:
    """READY=1 once the device can tell how it is (audio flows, or its fault is shown) and
    the provisioning server was asked (unreachable: OFFLINE, probed again with back-off)."""
    from appliance.errors import ProvisioningError

    await app.started.wait()
    try:
        await provisioning.probe()
    except ProvisioningError as exc:
        log.warning("at start: %s", exc)
        app.server_unreachable(exc)
        await app.drained()  # OFFLINE is shown before READY tells it
    notifier.ready(app.status_text())


async def _enroll(server: str, token: str, state_dir: Path, name: str) -> int:
    from appliance.identity import enroll

    identity = await enroll(server, token, state_dir, name)
    print(f"enrolled as {identity.device_id}; key stored in {state_dir}")
    return 0


def _devices() -> int:
    from appliance.audio.alsa import list_devices, useful_devices

    devices = useful_devices(list_devices())
    if not devices:
        print(
            "appliance: no capture or playback device found (is the HAT driver installed? "
            "README: Install; `arecord -l` and `aplay -l` list the kernel's cards)",
            file=sys.stderr,
        )
        return 1
    for dev in devices:
        kinds = ", ".join(
            f"{k} {n}ch" for k, n in (("capture", dev["inputs"]), ("playback", dev["outputs"])) if n
        )
        print(f"{dev['index']:>3}  {dev['name']:<44} {kinds:<26} {dev['rate']} Hz")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance", description="Realtime voice appliance")
    parser.add_argument("--version", action="version", version=f"appliance {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, default=None)
    enroll = sub.add_parser("enroll", help="enroll this device with a provisioning server")
    enroll.add_argument("--server", required=True)
    who = enroll.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="the enrollment token (visible in ps; prefer --token-file)")
    who.add_argument(
        "--token-file", type=Path, help="read the token from this file (keeps it out of ps)"
    )
    enroll.add_argument("--state-dir", type=Path, default=Path("/var/lib/appliance"))
    enroll.add_argument(
        "--name", default=socket.gethostname(), help="unique on the server (default: hostname)"
    )
    sub.add_parser("devices", help="list audio devices")
    check = sub.add_parser("check", help="pass/fail checks of audio, LEDs, button, server, session")
    check.add_argument("--config", type=Path, default=None)
    check.add_argument("--button-wait", type=float, default=10.0, help="seconds (0: skip)")
    check.add_argument("--no-button", action="store_true", help="do not wait for a button press")
    check.add_argument(
        "--offline", action="store_true", help="hardware only: no provisioning, no session"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "run":
            code = 0
            with contextlib.suppress(KeyboardInterrupt):
                code = asyncio.run(_run(args.config))
            if code == RELOAD:
                logging.shutdown()
                # same arguments, a fresh process image (same PID, as systemd expects)
                os.execv(sys.executable, sys.orig_argv)  # noqa: S606  # our own argv, no shell
            return code
        if args.command == "enroll":
            token = args.token
            if token is None:
                try:
                    token = args.token_file.read_text().strip()
                except OSError as exc:
                    raise ConfigError(
                        "--token-file", f"cannot read {args.token_file}: {exc}"
                    ) from None
            return asyncio.run(_enroll(args.server, token, args.state_dir, args.name))
        if args.command == "devices":
            return _devices()
        if args.command == "check":
            from appliance.check import main as check_main

            wait = 0.0 if args.no_button else args.button_wait
            return check_main(args.config, wait, offline=args.offline)
        raise AssertionError(args.command)  # argparse allows only the commands above
    except ConfigError as exc:
        print(f"appliance: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
