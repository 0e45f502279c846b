"""Fleet console: heartbeat history in buckets (SQLite and PostgreSQL), fleet gauges in
/metrics, the console's admin API, and the page itself in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from appliance.errors import DeviceRevoked
from appliance.heartbeat import send
from appliance.identity import Identity, enroll, public_key_b64
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.history import RESOLUTIONS, History, percentile, summarise
from provisioning.server import ProvisioningServer, Settings
from provisioning.store import Audit, Device, Group, HeartbeatBucket, Store
from standin import StandIn, StandInConfig
from tests.browser import CHROMIUM, chromium_args, silent_wav
from tests.e2e.harness import device as harness_device
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
            ("GET", "/v1/admin/console/events"),
            ("POST", "/v1/admin/devices/dev_x/rotate"),
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


async def test_overview_is_counted_in_sql_and_paged_attention_first(
    db_server: ProvisioningServer, tmp_path: Path
) -> None:
    """Counts cover the whole fleet; the list is one page at a time, the devices needing
    attention first (offline, then online ones waking falsely), then by name."""
    server = db_server
    server.store.ensure_group("hall")
    admin = server.store.create_admin()
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    made = {}
    for name in names:
        made[name] = await device(server, tmp_path, name, "hall" if name == "bravo" else "default")
    for name, (_identity, source) in made.items():
        extra = {"false_wakes": 9} if name == "delta" else {}  # no error: attention by wakes
        await source.heartbeat(report(10, **extra))
    await server.app.state.ledger.flush()
    with server.store.session.begin() as db:
        gone = made["echo"][0].device_id
        db.execute(update(Device).where(Device.id == gone).values(last_seen=1.0))
    server.store.set_device_state(made["foxtrot"][0].device_id, "disable")
    url = f"{server.base_url}/v1/admin/fleet"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}) as http:

        async def fleet(**params: Any) -> dict[str, Any]:
            r = await http.get(url, params=params)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        pages = [await fleet(limit=2, offset=offset) for offset in (0, 2, 4, 6)]
        assert [[d["name"] for d in p["devices"]] for p in pages] == [
            ["echo", "delta"],
            ["alpha", "bravo"],
            ["charlie", "foxtrot"],
            [],
        ]
        first = pages[0]
        assert first["counts"]["total"] == first["matching"] == 6
        assert (first["counts"]["online"], first["counts"]["offline"]) == (4, 1)
        assert first["counts"]["disabled"] == 1
        assert first["attention"] == 2
        assert first["devices"][1]["attention"] == ["9 false wakes in the last hour"]
        needing = await fleet(status="attention")
        assert [d["name"] for d in needing["devices"]] == ["echo", "delta"]
        assert needing["matching"] == 2
        assert [d["name"] for d in (await fleet(q="RAV"))["devices"]] == ["bravo"]
        assert [d["name"] for d in (await fleet(group="hall"))["devices"]] == ["bravo"]
        online = await fleet(status="online", limit=1)
        assert (online["matching"], len(online["devices"])) == (4, 1)
        summary = await fleet(limit=0)
        assert summary["devices"] == []
        assert summary["counts"] == first["counts"]


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The ``fleet`` events of a Server-Sent Events response, decoded."""
    name, data = "", []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())
        elif not line and data:
            if name == "fleet":
                yield json.loads("\n".join(data))
            name, data = "", []


async def test_live_feed_pushes_heartbeats_offline_and_admin_changes(
    db_server: ProvisioningServer, tmp_path: Path
) -> None:
    """The console's stream: the counts at once, a device going quiet pushed as offline
    (nobody asks: the server's sweep notices), its next heartbeat pushed as online again,
    and an admin's change pushed with the device it named."""
    server = db_server
    admin = server.store.create_admin()
    steady, steady_src = await device(server, tmp_path, "steady")
    flaky, flaky_src = await device(server, tmp_path, "flaky")
    await steady_src.heartbeat(report(10))
    await flaky_src.heartbeat(report(10, heartbeat_s=1))  # offline 2.5 s after its last beat
    auth = {"Authorization": f"Bearer {admin}"}
    async with (
        httpx.AsyncClient(headers=auth, timeout=30) as http,
        http.stream("GET", f"{server.base_url}/v1/admin/console/events") as response,
        asyncio.timeout(30),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        feed = events(response)
        hello = await anext(feed)
        assert hello["reasons"] == ["hello"]
        assert hello["counts"]["total"] == 2
        event = hello
        while event["counts"]["offline"] != 1:  # pushed by the sweep when it happens
            event = await anext(feed)
        assert event["counts"]["online"] == 1
        assert event["attention"] == 1
        await flaky_src.heartbeat(report(12))
        while event["counts"]["online"] != 2:
            event = await anext(feed)
        assert "heartbeat" in event["reasons"]
        assert flaky.device_id in event["devices"]
        url = f"{server.base_url}/v1/admin/devices/{steady.device_id}/disable"
        assert (await http.post(url)).status_code == 200
        while event["counts"]["disabled"] != 1:
            event = await anext(feed)
        assert event["reasons"] == ["admin"]
        assert event["devices"] == [steady.device_id]
    assert server.app.state.fleet.feed.pushed >= 3


async def test_admin_asks_a_device_to_rotate_its_key(
    db_server: ProvisioningServer, tmp_path: Path
) -> None:
    """The admin asks; the device's next heartbeat is answered with the request and the
    device's heartbeat client makes, registers and stores a new key; the console shows the
    request, then the rotation; both are audited."""
    server = db_server
    admin = server.store.create_admin()
    state = tmp_path / "kitchen"
    identity = await enroll(server.base_url, server.store.create_token("default"), state, "kitchen")
    source = ProvisioningKeySource(identity)
    enrolled_key = public_key_b64(identity.private_key)
    auth = {"Authorization": f"Bearer {admin}"}
    detail_url = f"{server.base_url}/v1/admin/devices/{identity.device_id}/detail"
    async with (
        StandIn(StandInConfig(api_key=STANDIN_KEY)) as standin,
        harness_device(standin, tmp_path / "device") as dev,
        httpx.AsyncClient(headers=auth) as http,
    ):
        started = time.monotonic()
        assert await send(source, dev.app, started)
        assert (await http.get(detail_url)).json()["key"]["rotation_requested_at"] is None

        url = f"{server.base_url}/v1/admin/devices/{identity.device_id}/rotate"
        assert (await http.post(url)).status_code == 200
        key = (await http.get(detail_url)).json()["key"]
        assert key["rotation_requested_at"] is not None
        assert key["rotations"] == []
        # the request rides on every heartbeat's reply until the device has rotated
        assert await source.heartbeat(report(5)) == {"rotate_key": True}
        assert await send(source, dev.app, started)  # this one rotates

        stored = Identity.load(state)
        new_key = public_key_b64(stored.private_key)
        assert new_key != enrolled_key
        with server.store.session() as db:
            row = db.get_one(Device, identity.device_id)
            assert (row.public_key, row.previous_key) == (new_key, enrolled_key)
            assert row.rotate_requested_at is None
        key = (await http.get(detail_url)).json()["key"]
        assert key["rotation_requested_at"] is None
        assert len(key["rotations"]) == 1
        assert await source.heartbeat(report(6)) == {}  # signed with the new key; no request
        assert public_key_b64(Identity.load(state).private_key) == new_key
        await server.app.state.ledger.flush()
        audit = (
            await http.get(
                f"{server.base_url}/v1/admin/audit/search?device_id={identity.device_id}"
            )
        ).json()["audit"]
    actions = [a["action"] for a in reversed(audit)]
    assert actions.index("device.rotate_requested") < actions.index("device.rotate")
    requested = next(a for a in audit if a["action"] == "device.rotate_requested")
    assert requested["detail"]["admin"] == admin.split(".")[0].removeprefix("adm_")
    server.store.set_device_state(identity.device_id, "revoke")
    async with httpx.AsyncClient(headers=auth) as http:
        refused = await http.post(url)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "device_revoked")


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
        """Wait until the page shows ``n`` on the ``kind`` card."""
        await page.wait_for_function(
            "([kind, n]) => document.querySelector(`[data-count='${kind}'] b`)"
            "?.textContent === String(n)",
            arg=[kind, n],
        )

    async def feed(page: Page, mode: str) -> None:
        """Wait until the page's live updates are ``stream`` (pushed) or ``polling``."""
        await page.wait_for_function("(mode) => document.body.dataset.live === mode", arg=mode)

    silence = silent_wav(tmp_path)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(silence))
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        # polling only every 10 minutes: whatever changes below was pushed
        await page.goto(f"{server.base_url}/console?poll=600000")
        await page.fill("#token", admin)
        await page.click("#login button[type=submit]")
        await feed(page, "stream")
        await count(page, "online", 12)
        await count(page, "offline", 0)

        # three devices beat once more, saying they beat every second, then go quiet: 2.5 s
        # later the server's sweep pushes them offline, with nobody asking
        for _identity, source in fleet[9:12]:
            await source.heartbeat(report(3700, heartbeat_s=1))
        await count(page, "offline", 3)
        await count(page, "online", 9)
        await page.wait_for_function(
            "document.querySelector('#devices tbody tr')?.dataset.status === 'offline'"
        )  # attention first
        await page.screenshot(path=str(ARTEFACTS / "overview-desktop.png"), full_page=True)
        for _identity, source in fleet[9:12]:  # and come back: each heartbeat is pushed
            await source.heartbeat(report(7200))
        await count(page, "online", 12)
        await count(page, "offline", 0)
        # an admin's change elsewhere (the API, another console) is pushed too
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin}"}) as http:
            url = f"{server.base_url}/v1/admin/devices/{fleet[5][0].device_id}/disable"
            assert (await http.post(url)).status_code == 200
            await count(page, "disabled", 1)
            await count(page, "online", 11)
            assert (await http.post(url.replace("disable", "enable"))).status_code == 200
            await count(page, "online", 12)
        assert await page.evaluate("document.body.dataset.live") == "stream"

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
        # a new key: asked on the page, made by the device at its next heartbeat; the page
        # follows by itself (the rotation is pushed)
        key_says = "(document.querySelector(\"dd[data-key='key']\")?.textContent ?? '')"
        await page.click("#rotate")
        await page.wait_for_function(f"{key_says}.startsWith('rotation requested')")
        assert await star_src.heartbeat(report(90180)) == {"rotate_key": True}
        await star_src.rotate_key()
        await page.wait_for_function(f"{key_says}.startsWith('rotated ')")
        await page.screenshot(path=str(ARTEFACTS / "device-rotated.png"), full_page=True)
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

        # a phone whose live stream cannot get through: it polls instead, and takes the
        # stream once it can
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        blocked = "**/v1/admin/console/events"
        await phone.route(blocked, lambda route: route.abort())
        await phone.goto(f"{server.base_url}/console?poll=300&retry=500")
        await phone.fill("#token", admin)
        await phone.click("#login button[type=submit]")
        await feed(phone, "polling")
        await count(phone, "online", 12)
        _quiet, quiet_src = fleet[8]
        await quiet_src.heartbeat(report(7300, heartbeat_s=1))
        await count(phone, "offline", 1)  # found by polling
        await quiet_src.heartbeat(report(7400))
        await count(phone, "offline", 0)
        await phone.unroute(blocked)
        await feed(phone, "stream")
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
