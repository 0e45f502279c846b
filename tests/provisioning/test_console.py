"""Fleet console: heartbeat history in buckets (SQLite and PostgreSQL), fleet gauges in
/metrics, the console's admin API, and the page itself in headless Chromium."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from appliance.errors import DeviceRevoked
from appliance.identity import Identity, enroll
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.history import RESOLUTIONS, History, percentile, summarise
from provisioning.server import ProvisioningServer, Settings
from provisioning.standin import StandIn, StandInConfig
from provisioning.store import Audit, Device, Group, HeartbeatBucket, Store
from tests.browser import CHROMIUM, chromium_args, silent_wav
from tests.provisioning.conftest import STANDIN_KEY

ARTEFACTS = Path(os.environ.get("APPLIANCE_TEST_ARTIFACTS", "test-artifacts")) / "console"
"""Screenshots of the console, kept after the run (gitignored)."""


@pytest.fixture
async def db_server(db_url: str) -> AsyncIterator[ProvisioningServer]:
    """A provisioning server on SQLite or PostgreSQL."""
    async with StandIn(StandInConfig(api_key=STANDIN_KEY)) as standin:
        settings = Settings(
            database_url=db_url, upstream_url=standin.base_url, openai_api_key=STANDIN_KEY, port=0
        )
        async with ProvisioningServer(settings) as srv:
            yield srv


async def device(
    server: ProvisioningServer, tmp_path: Path, name: str, group: str = "default"
) -> tuple[Identity, ProvisioningKeySource]:
    identity = await enroll(
        server.base_url, server.store.create_token(group), tmp_path / name, name
    )
    return identity, ProvisioningKeySource(identity)


def report(uptime: int, **values: Any) -> dict[str, Any]:
    return {"version": "0.3.0", "uptime_s": uptime, "state": "idle", "heartbeat_s": 60, **values}


def buckets(store: Store, device_id: str) -> dict[int, HeartbeatBucket]:
    with store.session() as db:
        rows = db.scalars(select(HeartbeatBucket).where(HeartbeatBucket.device_id == device_id))
        return {r.span: r for r in rows}


async def test_heartbeats_are_summarised_into_buckets(
    db_server: ProvisioningServer, tmp_path: Path
) -> None:
    identity, source = await device(db_server, tmp_path, "kitchen")
    await source.heartbeat(report(100, turns=1, last_turn_latency_ms=600, false_wakes=2))
    await source.heartbeat(
        report(160, turns=2, last_turn_latency_ms=1800, false_wakes=5, reconnects=1)
    )
    # the device restarted: its counters start again from zero
    await source.heartbeat(
        report(20, turns=1, last_turn_latency_ms=400, false_wakes=1, erle_db=31.5)
    )
    await db_server.app.state.ledger.flush()
    rows = buckets(db_server.store, identity.device_id)
    assert set(rows) == {r.span_s for r in RESOLUTIONS}
    for row in rows.values():  # both resolutions hold the same sums (one bucket each here)
        assert row.beats == 3
        assert row.false_wakes == 2 + 3 + 1
        assert row.reconnects == 1
        assert row.latency_n == 3
        assert row.latency_max == 1800
        assert (row.lat_h1, row.lat_h2, row.lat_h5) == (1, 1, 1)  # ≤500, ≤750, ≤2000 ms
        assert (row.erle_n, row.erle_sum) == (1, 31.5)


async def test_transcripts_are_stored_only_when_the_group_opts_in(
    db_server: ProvisioningServer, tmp_path: Path
) -> None:
    identity, source = await device(db_server, tmp_path, "hall")
    words = {"user": "what's the weather", "assistant": "sunny"}
    await source.heartbeat(report(10, last_turn=words))
    await db_server.app.state.ledger.flush()
    with db_server.store.session() as db:
        assert "last_turn" not in db.get_one(Device, identity.device_id).health
    admin = db_server.store.create_admin()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}) as http:
        url = f"{db_server.base_url}/v1/admin/groups/default/transcripts"
        assert (await http.put(url, json={"enabled": "yes"})).status_code == 400
        assert (await http.put(url, json={"enabled": True})).status_code == 200
    await source.heartbeat(report(70, last_turn=words))
    await db_server.app.state.ledger.flush()
    with db_server.store.session() as db:
        assert db.get_one(Device, identity.device_id).health["last_turn"] == words
        assert db.get_one(Group, "default").report_transcripts
        assert db.scalars(select(Audit).where(Audit.action == "group.transcripts")).one()


async def test_old_buckets_are_purged(db_server: ProvisioningServer) -> None:
    store = db_server.store
    now = time.time()
    with store.session.begin() as db:
        db.add(Device(id="dev_old", name="old", group="default", public_key="k", created_at=0))
    history = History(store.engine.dialect.name)
    day = 86400
    for at in (now - 9 * day, now - 3 * day, now - 3600):
        write(store, history, "dev_old", {"uptime_s": 1}, at)
    with store.engine.begin() as conn:
        history.purge(conn.connection.dbapi_connection.cursor(), now)  # type: ignore[union-attr]
    with store.session() as db:
        kept = sorted(
            (r.span, now - r.bucket < r.span + (2 * day if r.span == 900 else 8 * day))
            for r in db.scalars(select(HeartbeatBucket))
        )
    # 15-minute buckets: only the last hour's is left; hourly: 3 days and 1 hour ago
    assert kept == [(900, True), (3600, True), (3600, True)]


def write(
    store: Store, history: History, device_id: str, health: dict[str, Any], at: float
) -> None:
    """One heartbeat through the history hook at time ``at`` (what the ledger does)."""
    with store.engine.begin() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        history.record(cur, [(device_id, health)], at)
    with store.session.begin() as db:
        db.execute(update(Device).where(Device.id == device_id).values(health=health))


def test_summaries_and_percentiles() -> None:
    first = summarise({"uptime_s": 5, "wakes": 3, "last_error": "mic gone"}, None)
    assert (first["wakes"], first["errors"]) == (3, 1)  # a new device counts from zero
    same = summarise({"uptime_s": 65, "wakes": 3, "last_error": "mic gone"}, {"uptime_s": 5})
    assert same["errors"] == 1  # an error the previous report did not have
    repeat = summarise(
        {"uptime_s": 125, "wakes": 4, "last_error": "mic gone"},
        {"uptime_s": 65, "wakes": 3, "last_error": "mic gone"},
    )
    assert (repeat["wakes"], repeat["errors"]) == (1, 0)
    nested = summarise({"aec_health": {"erle_db": 20, "self_interruptions": 2}}, None)
    assert (nested["erle_sum"], nested["self_interruptions"]) == (20, 2)
    assert percentile([0] * 8, 0.5) is None
    assert percentile([10, 0, 0, 0, 0, 0, 0, 0], 0.95) == 250
    assert percentile([50, 0, 0, 0, 0, 0, 0, 50], 0.95) == 3000


async def test_console_api_needs_the_admin_credential(server: ProvisioningServer) -> None:
    async with httpx.AsyncClient() as http:
        for method, path in (
            ("GET", "/v1/admin/fleet"),
            ("GET", "/v1/admin/devices/dev_x/detail"),
            ("GET", "/v1/admin/devices/dev_x/history"),
            ("GET", "/v1/admin/console/groups"),
            ("PUT", "/v1/admin/groups/default/transcripts"),
            ("GET", "/v1/admin/tokens"),
            ("POST", "/v1/admin/tokens/1/expire"),
            ("GET", "/v1/admin/audit/search"),
        ):
            for auth in ({}, {"Authorization": "Bearer adm_nope.nope"}):
                r = await http.request(method, server.base_url + path, headers=auth)
                assert r.status_code == 401, path
                assert r.json()["error"]["code"] == "admin_required"


@pytest.mark.slow  # four devices enrolled and reporting
async def test_overview_counts_and_puts_attention_first(
    db_server: ProvisioningServer, tmp_path: Path
) -> None:
    server = db_server
    admin = server.store.create_admin()
    _quiet, quiet_src = await device(server, tmp_path, "aaa-quiet")
    noisy, noisy_src = await device(server, tmp_path, "zzz-noisy")
    gone, gone_src = await device(server, tmp_path, "mmm-gone")
    _muted, muted_src = await device(server, tmp_path, "bbb-muted")
    await quiet_src.heartbeat(report(10))
    await noisy_src.heartbeat(report(10, false_wakes=9, last_error="wake word model failed"))
    await gone_src.heartbeat(report(10))
    await muted_src.heartbeat({**report(10), "state": "muted"})
    await server.app.state.ledger.flush()
    with server.store.session.begin() as db:
        db.execute(update(Device).where(Device.id == gone.device_id).values(last_seen=1.0))
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}) as http:
        body = (await http.get(f"{server.base_url}/v1/admin/fleet")).json()
        assert body["counts"] == {
            "total": 4,
            "online": 3,
            "offline": 1,
            "error": 1,
            "muted": 1,
            "disabled": 0,
            "revoked": 0,
        }
        assert body["states"] == {"idle": 2, "muted": 1}
        order = [d["name"] for d in body["devices"]]
        assert order == ["mmm-gone", "zzz-noisy", "aaa-quiet", "bbb-muted"]
        attention = body["devices"][1]["attention"]
        assert "error: wake word model failed" in attention
        assert "9 false wakes in the last hour" in attention
        detail = await http.get(f"{server.base_url}/v1/admin/devices/{gone.device_id}/detail")
        assert detail.json()["status"] == "offline"
        assert detail.json()["config"]["firmware"] == "0.3.0"
        history = await http.get(
            f"{server.base_url}/v1/admin/devices/{noisy.device_id}/history?range=7d"
        )
        assert [n for n in history.json()["series"]["false_wakes_per_h"] if n] == [9.0]
        metrics = (await http.get(f"{server.base_url}/metrics")).text
    assert 'provisioning_devices{status="online"} 3.0' in metrics
    assert 'provisioning_devices{status="offline"} 1.0' in metrics
    assert 'provisioning_devices_by_state{state="muted"} 1.0' in metrics
    assert "provisioning_heartbeats_total 4.0" in metrics
    assert "provisioning_devices_needing_attention 2.0" in metrics
    assert "provisioning_devices_in_error 1.0" in metrics


async def test_refusals_are_counted_by_reason(server: ProvisioningServer, tmp_path: Path) -> None:
    identity, source = await device(server, tmp_path, "den")
    await source.heartbeat(report(1))
    server.store.set_device_state(identity.device_id, "disable")
    with pytest.raises(DeviceRevoked, match="401 disabled"):
        await source.heartbeat(report(2))
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{server.base_url}/metrics")).text
    assert 'provisioning_refusals_total{reason="disabled"} 1.0' in metrics


def seed_history(server: ProvisioningServer, identity: Identity, hours: int) -> None:
    """A day of heartbeats, one every 15 minutes, through the history hook."""
    history: History = server.app.state.ledger.history
    start = time.time() - hours * 3600
    for i in range(hours * 4):
        health = report(
            60 + i * 900,
            turns=i,
            last_turn_latency_ms=500 + (i % 8) * 150,
            false_wakes=i // 3,
            reconnects=i // 10,
            erle_db=25 + i % 5,
            session_s=30 + i % 40,
        )
        write(server.store, history, identity.device_id, health, start + i * 900)


@pytest.mark.chromium
async def test_console_in_chromium(server: ProvisioningServer, tmp_path: Path) -> None:
    """Log in, see the counts follow devices going offline and coming back, open a device
    page drawn from stored history, disable and enable it; screenshots at desktop and phone
    widths."""
    from playwright.async_api import Page, async_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    admin = server.store.create_admin()
    server.store.ensure_group("kitchens")
    fleet: list[tuple[Identity, ProvisioningKeySource]] = []
    for i in range(12):
        fleet.append(
            await device(server, tmp_path, f"unit-{i:02d}", "kitchens" if i % 2 else "default")
        )
    for i, (_identity, source) in enumerate(fleet):
        extra = {"false_wakes": 7} if i == 3 else {}
        await source.heartbeat(report(3600 + i, last_turn_latency_ms=700 + 10 * i, **extra))
    star, star_src = fleet[0]
    seed_history(server, star, 24)
    await star_src.heartbeat(report(90000, last_turn_latency_ms=640))
    await server.app.state.ledger.flush()

    async def count(page: Page, kind: str, n: int) -> None:
        await page.wait_for_selector(f"[data-count='{kind}'] b:text-is('{n}')")

    silence = silent_wav(tmp_path)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(silence))
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        await page.goto(f"{server.base_url}/console?poll=300")
        await page.fill("#token", admin)
        await page.click("#login button[type=submit]")
        await count(page, "online", 12)
        await count(page, "offline", 0)

        # three devices go quiet (their last heartbeat long ago): the page follows by itself
        quiet = [identity.device_id for identity, _ in fleet[9:12]]
        with server.store.session.begin() as db:
            db.execute(
                update(Device).where(Device.id.in_(quiet)).values(last_seen=time.time() - 3600)
            )
        await count(page, "offline", 3)
        await count(page, "online", 9)
        first = await page.locator("#devices tbody tr").first.get_attribute("data-status")
        assert first == "offline"  # attention first
        await page.screenshot(path=str(ARTEFACTS / "overview-desktop.png"), full_page=True)
        for _identity, source in fleet[9:12]:  # and come back
            await source.heartbeat(report(7200))
        await count(page, "online", 12)
        await count(page, "offline", 0)

        # the device page: plots drawn from the stored buckets
        await page.click(f"tr[data-id='{star.device_id}'] a")
        await page.wait_for_selector("#plots .plot canvas")
        points = await page.locator("#plots .plot").first.get_attribute("data-points")
        assert points is not None
        assert int(points) >= 2 * 90
        assert await page.locator("#plots .plot canvas").count() == 7
        await page.screenshot(path=str(ARTEFACTS / "device-desktop.png"), full_page=True)
        await page.click("#disable")
        await page.wait_for_selector("#device-status:text-is('disabled')")
        with pytest.raises(DeviceRevoked, match="401 disabled"):
            await star_src.heartbeat(report(90060))
        await page.click("#enable")
        await page.wait_for_selector("#device-status:text-is('online')")
        await star_src.heartbeat(report(90120))
        await page.select_option("#range", "7d")
        await page.wait_for_selector("#plots .plot canvas")

        await page.goto(f"{server.base_url}/console#/tokens")
        await page.fill("#tokens input[name=label]", "shelf")
        await page.click("#create-token")
        await page.wait_for_selector("#new-token:has-text('enr_')")
        for name in ("groups", "tokens", "audit"):
            await page.goto(f"{server.base_url}/console#/{name}")
            await page.wait_for_selector(f"#{name} table")
            await page.screenshot(path=str(ARTEFACTS / f"{name}-desktop.png"), full_page=True)
        await page.fill("#audit input[name=action]", "token.")
        await page.click("#audit button[type=submit]")
        await page.wait_for_selector("#audit td:text-is('device.enroll')", state="detached")
        assert await page.locator("#audit td:text-is('token.create')").count() == 13
        await page.fill("#audit input[name=action]", "device.")
        await page.click("#audit button[type=submit]")
        await page.wait_for_selector("#audit td:text-is('device.enable')")
        audit = await page.locator("#audit").inner_text()
        assert "device.disable" in audit
        assert "device.enable" in audit

        # a phone: nothing runs off the right edge
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        await phone.goto(f"{server.base_url}/console?poll=300")
        await phone.fill("#token", admin)
        await phone.click("#login button[type=submit]")
        await count(phone, "online", 12)
        for route, shot in (("", "overview"), (f"device/{star.device_id}", "device")):
            await phone.goto(f"{server.base_url}/console#/{route}")
            await phone.wait_for_selector("#counts .card" if not route else "#plots .plot canvas")
            overflow = await phone.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{shot}: {overflow}px wider than the phone"
            await phone.screenshot(path=str(ARTEFACTS / f"{shot}-phone.png"), full_page=True)
        await browser.close()
    with server.store.session() as db:
        actions = [
            a.action for a in db.scalars(select(Audit).where(Audit.device_id == star.device_id))
        ]
    assert "device.disable" in actions
    assert "device.enable" in actions
