"""Admin API, dashboard (headless Chromium) and metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from appliance.errors import DeviceRevoked
from appliance.identity import enroll
from appliance.realtime.provisioning_keys import ProvisioningKeySource
from provisioning.__main__ import main as cli
from provisioning.server import ProvisioningServer
from provisioning.store import Device, Group, Store, hash_token
from tests.browser import CHROMIUM, chromium_args, silent_wav
from tests.provisioning.conftest import STANDIN_KEY
from tests.waiting import Changes

KEY = STANDIN_KEY


async def test_admin_api_manages_the_fleet(server: ProvisioningServer, tmp_path: Path) -> None:
    admin = server.store.create_admin("ops")
    auth = {"Authorization": f"Bearer {admin}"}
    base = f"{server.base_url}/v1/admin"
    async with httpx.AsyncClient() as http:
        put = await http.put(
            f"{base}/groups/lab",
            headers=auth,
            json={
                "profile": {"type": "realtime", "audio": {"output": {"voice": "ash"}}},
                "limits": {"device_per_minute": 5},
            },
        )
        assert put.status_code == 200
        made = await http.post(f"{base}/tokens", headers=auth, json={"group": "lab", "uses": 2})
        assert made.status_code == 201
        token = made.json()["token"]
        identity = await enroll(server.base_url, token, tmp_path / "d", "lab-1")
        key = await ProvisioningKeySource(identity).get_key()
        assert key.session["audio"]["output"]["voice"] == "ash"
        listed = (await http.get(f"{base}/devices", headers=auth)).json()["devices"]
        assert [(d["name"], d["group"], d["status"]) for d in listed] == [
            ("lab-1", "lab", "enabled")
        ]
        assert listed[0]["last_seen"] is not None
        revoked = await http.post(f"{base}/devices/{identity.device_id}/revoke", headers=auth)
        assert revoked.status_code == 200
        audit = (await http.get(f"{base}/audit", headers=auth)).json()["audit"]
        actions = [a["action"] for a in audit]
        assert {"device.enroll", "key.mint", "device.revoke", "token.create"} <= set(actions)
        assert token not in str(audit), "no secret in the audit log"
        assert admin not in str(audit)
        assert (
            await http.delete(f"{base}/devices/{identity.device_id}", headers=auth)
        ).status_code == 204
        assert (await http.get(f"{base}/devices", headers=auth)).json()["devices"] == []
        # groups: in use → 409; empty → deleted, with its tokens; then unknown → 404
        other = await enroll(server.base_url, token, tmp_path / "e", "lab-2")  # claim's 2nd use
        assert (await http.delete(f"{base}/groups/lab", headers=auth)).status_code == 409
        await http.delete(f"{base}/devices/{other.device_id}", headers=auth)
        spare = (await http.post(f"{base}/tokens", headers=auth, json={"group": "lab"})).json()
        assert (await http.delete(f"{base}/groups/lab", headers=auth)).status_code == 204
        names = [
            g["name"] for g in (await http.get(f"{base}/groups", headers=auth)).json()["groups"]
        ]
        assert "lab" not in names
        assert server.store.token_state(hash_token(spare["token"])) is None, "tokens went too"
        assert (await http.delete(f"{base}/groups/lab", headers=auth)).status_code == 404
        actions = [
            a["action"] for a in (await http.get(f"{base}/audit", headers=auth)).json()["audit"]
        ]
        assert "group.delete" in actions


async def test_admin_requests_do_not_hold_up_devices(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    """An admin credential costs a deliberate scrypt hash (tens of ms) and the dashboard's
    queries can be long: they run in worker threads, so a device's request that arrives
    meanwhile is answered first."""
    admin = server.store.create_admin("ops")
    token = server.store.create_token("default")
    identity = await enroll(server.base_url, token, tmp_path / "d", "d")
    finished: list[str] = []
    sent = Changes()
    admins_sent = 0

    async def on_request(request: httpx.Request) -> None:
        nonlocal admins_sent
        admins_sent += "/v1/admin/" in request.url.path
        sent.notify()

    async with httpx.AsyncClient(event_hooks={"request": [on_request]}) as http:

        async def admin_list() -> None:
            auth = {"Authorization": f"Bearer {admin}"}
            reply = await http.get(f"{server.base_url}/v1/admin/devices", headers=auth)
            assert reply.status_code == 200
            finished.append("admin")

        async def device_heartbeat() -> None:
            await sent.until(lambda: admins_sent == 3, "the admin requests sent")
            auth = {"Authorization": f"Bearer {identity.token()}"}
            reply = await http.post(
                f"{server.base_url}/v1/devices/heartbeat", headers=auth, json={"uptime_s": 1}
            )
            assert reply.status_code == 204
            finished.append("device")

        await asyncio.gather(admin_list(), admin_list(), admin_list(), device_heartbeat())
    assert finished[0] == "device", finished


async def test_admin_endpoints_refuse_devices_and_strangers(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    identity = await enroll(server.base_url, server.store.create_token("default"), tmp_path, "x")
    base = f"{server.base_url}/v1/admin"
    async with httpx.AsyncClient() as http:
        for creds in [
            identity.token(),
            "adm_deadbeef.nope",
            server.store.create_admin()[:-2] + "xx",
            "",
        ]:
            headers = {"Authorization": f"Bearer {creds}"} if creds else {}
            for method, path in [
                ("GET", "/devices"),
                ("POST", "/tokens"),
                ("GET", "/audit"),
                ("POST", f"/devices/{identity.device_id}/revoke"),
            ]:
                response = await http.request(method, base + path, headers=headers, json={})
                assert response.status_code == 401, (method, path)


async def test_metrics_count_mints(server: ProvisioningServer, tmp_path: Path) -> None:
    identity = await enroll(server.base_url, server.store.create_token("default"), tmp_path, "m")
    await ProvisioningKeySource(identity).get_key()
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.base_url}/metrics")).text
        assert 'provisioning_mints_total{outcome="ok"} 1.0' in text
        assert (await http.get(f"{server.base_url}/healthz")).json() == {"status": "ok"}
        schema = (await http.get(f"{server.base_url}/openapi.json")).json()
        assert "/v1/realtime/keys" in schema["paths"]


@pytest.mark.chromium
async def test_dashboard_lists_devices_and_revokes(
    server: ProvisioningServer, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    admin = server.store.create_admin()
    a = await enroll(
        server.base_url, server.store.create_token("default"), tmp_path / "a", "kitchen"
    )
    await enroll(server.base_url, server.store.create_token("default"), tmp_path / "b", "hall")
    await ProvisioningKeySource(a).heartbeat({"version": "0.1.0", "last_turn_latency_ms": 640})
    silence = silent_wav(tmp_path)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(silence))
        page = await browser.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        await page.goto(f"{server.base_url}/dashboard")
        await page.fill("#token", admin)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#devices tbody tr")
        rows = await page.locator("#devices tbody tr").all_inner_texts()
        assert len(rows) == 2
        kitchen = next(r for r in rows if "kitchen" in r)
        assert "enabled" in kitchen
        assert "v0.1.0, latency 640 ms" in kitchen
        await page.click(f"tr[data-id='{a.device_id}'] button")
        await page.wait_for_selector(f"tr[data-id='{a.device_id}'] td.revoked")
        await page.screenshot(path=str(tmp_path / "dashboard.png"))
        await browser.close()
    with pytest.raises(DeviceRevoked, match="401"):
        await ProvisioningKeySource(a).get_key()


def test_cli_deletes_groups_and_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROVISIONING_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert cli(["--database-url", url, "group", "set", "lab"]) == 0
    store = Store(url)
    try:
        with store.session.begin() as db:
            db.add(Device(id="dev_1", name="one", group="lab", public_key="k", created_at=0))
        assert cli(["--database-url", url, "group", "delete", "lab"]) == 1
        assert "devices still belong to it" in capsys.readouterr().err
        assert cli(["--database-url", url, "device", "delete", "dev_1"]) == 0
        assert cli(["--database-url", url, "device", "delete", "dev_1"]) == 65  # EX_DATAERR
        assert cli(["--database-url", url, "group", "delete", "lab"]) == 0
        assert cli(["--database-url", url, "group", "delete", "lab"]) == 1
        assert "no such group" in capsys.readouterr().err
        with store.session() as db:
            assert db.get(Group, "lab") is None
    finally:
        store.close()
