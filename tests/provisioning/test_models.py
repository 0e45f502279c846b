"""The model lifecycle guard: the shutdown table and its overrides, the refresh from
``GET /v1/models`` (the stand-in's), warnings in ``group list`` / ``/metrics`` / the log /
the admin API, ``group set --model`` across groups, and the mint path past a shutdown date.
Every judgement runs against an injected clock, never today's date."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from appliance.identity import Identity, enroll
from appliance_common.models import (
    DEFAULT_MINI_MODEL,
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    SHUTDOWN_DATES,
)
from provisioning.__main__ import main as cli
from provisioning.models import (
    ModelLifecycle,
    ModelWatch,
    SettingsError,
    group_findings,
    move_groups,
    parse_models_list,
)
from provisioning.server import ProvisioningServer, Settings
from provisioning.store import Audit, Group, Store
from standin import StandIn, StandInConfig

KEY = "sk-standin-models-test"
OLD = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "Be brief.",
    "audio": {
        "input": {"transcription": {"model": "gpt-4o-mini-transcribe"}},
        "output": {"voice": "marin"},
    },
}


def day(iso: str) -> Callable[[], float]:
    """A clock stopped at noon UTC of this day."""
    moment = dt.datetime.fromisoformat(iso).replace(hour=12, tzinfo=dt.UTC).timestamp()
    return lambda: moment


# ---------------------------------------------------------------------- the table


def test_the_table_flags_gpt_realtime_within_sixty_days_of_its_shutdown() -> None:
    before = ModelLifecycle(clock=day("2026-10-01"))
    assert before.findings(OLD) == [], "111 and 148 days left: outside the window"
    now = ModelLifecycle(clock=day("2026-12-05"))
    found = {f.field: f for f in now.findings(OLD)}
    assert set(found) == {"model"}, "the transcription model has 83 days left"
    f = found["model"]
    assert (f.model, f.shutdown, f.days_left, f.replacement, f.retired) == (
        "gpt-realtime",
        dt.date(2027, 1, 20),
        46,
        DEFAULT_MODEL,
        False,
    )
    later = ModelLifecycle(clock=day("2027-01-20"))
    found = {f.field: f for f in later.findings(OLD)}
    assert found["model"].retired
    assert found["model"].days_left == 0
    assert found["transcription"].replacement == DEFAULT_TRANSCRIPTION_MODEL
    assert later.findings({"type": "realtime", "model": DEFAULT_MODEL}) == []
    assert later.findings({"type": "realtime", "model": "gpt-realtime-mini"})[0].replacement == (
        DEFAULT_MINI_MODEL
    )


def test_overrides_beat_the_upstream_which_beats_the_table() -> None:
    lifecycle = ModelLifecycle(
        overrides={DEFAULT_MODEL: dt.date(2027, 1, 1), "gpt-realtime": None},
        clock=day("2026-12-05"),
    )
    changed = lifecycle.update_from_upstream(
        {DEFAULT_MODEL: None, "gpt-realtime-2": dt.date(2027, 2, 1), "gpt-4o-mini-transcribe": None}
    )
    assert sorted(changed) == ["gpt-4o-mini-transcribe", "gpt-realtime-2"]
    assert lifecycle.shutdown_date(DEFAULT_MODEL) == dt.date(2027, 1, 1), "override wins"
    assert lifecycle.shutdown_date("gpt-realtime") is None, "override: no date"
    assert lifecycle.shutdown_date("gpt-realtime-2") == dt.date(2027, 2, 1), "upstream"
    assert lifecycle.shutdown_date("gpt-4o-mini-transcribe") is None, "upstream beats table"
    assert lifecycle.shutdown_date("whisper-1") == dt.date(2027, 2, 26), "the table"
    assert [f.model for f in lifecycle.findings(OLD)] == []
    assert [f.days_left for f in lifecycle.findings({"model": DEFAULT_MODEL})] == [27]
    assert not lifecycle.known("gpt-realtime-7")
    assert lifecycle.known("gpt-realtime-2")


def test_settings_from_the_environment_and_bad_ones_name_the_key() -> None:
    env = {
        "PROVISIONING_MODEL_SHUTDOWN_DATES": json.dumps(
            {"gpt-realtime-2": "2027-03-01", "gpt-realtime": None}
        ),
        "PROVISIONING_MODEL_WARN_DAYS": "90",
        "PROVISIONING_RETIRED_MODEL": "refuse",
    }
    settings = Settings.from_env(env)
    assert settings.model_shutdown_dates == {
        "gpt-realtime-2": dt.date(2027, 3, 1),
        "gpt-realtime": None,
    }
    assert (settings.model_warn_days, settings.retired_model) == (90, "refuse")
    for key, value in [
        ("PROVISIONING_MODEL_SHUTDOWN_DATES", "{not json"),
        ("PROVISIONING_MODEL_SHUTDOWN_DATES", '["gpt-realtime"]'),
        ("PROVISIONING_MODEL_SHUTDOWN_DATES", '{"gpt-realtime": "next spring"}'),
        ("PROVISIONING_MODEL_WARN_DAYS", "sixty"),
        ("PROVISIONING_RETIRED_MODEL", "ignore"),
    ]:
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({key: value})
        assert caught.value.key == key


def test_the_cli_exits_78_on_a_bad_model_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PROVISIONING_MODEL_WARN_DAYS", "-1")
    assert cli(["--database-url", f"sqlite:///{tmp_path / 'p.db'}", "group", "list"]) == 78
    assert "PROVISIONING_MODEL_WARN_DAYS" in capsys.readouterr().err


def test_models_list_parsing_tolerates_odd_entries() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "a", "shutdown_date": "2027-01-20"},
            {"id": "b", "shutdown_date": None},
            {"id": "c"},
            {"id": "d", "shutdown_date": "soon"},
            {"no": "id"},
            "junk",
        ],
    }
    assert parse_models_list(body) == {"a": dt.date(2027, 1, 20), "b": None, "c": None, "d": None}
    assert parse_models_list(["not", "an", "object"]) == {}


@pytest.mark.parametrize(
    ("today", "warned"), [("2026-10-01", False), ("2026-12-05", True), ("2027-02-01", True)]
)
def test_the_log_and_metrics_warn_by_the_injected_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, today: str, warned: bool
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    store = Store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        store.ensure_group("default")
        store.ensure_group("kitchen", {"type": "realtime", "model": "gpt-realtime"})
        registry = CollectorRegistry()
        watch = ModelWatch(store, ModelLifecycle(clock=day(today)), None, registry)
        with caplog.at_level(logging.WARNING, logger="provisioning.models"):
            found = watch.check()
        metrics = generate_latest(registry).decode()
    finally:
        store.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "provisioning.models"]
    gauge = (
        'provisioning_group_model_shutdown_days{field="model",group="kitchen",'
        'model="gpt-realtime",replacement="gpt-realtime-2.1"}'
    )
    if not warned:
        assert (found, lines) == ({}, [])
        assert gauge not in metrics
        assert "provisioning_groups_on_retiring_models 0.0" in metrics
        assert "provisioning_model_dates_refreshed_timestamp_seconds 0.0" in metrics
        return
    days = (dt.date(2027, 1, 20) - dt.date.fromisoformat(today)).days
    assert list(found) == ["kitchen"], "the default group is on gpt-realtime-2.1"
    assert len(lines) == 1
    assert "group 'kitchen': model gpt-realtime" in lines[0]
    assert "provisioning group set kitchen --model gpt-realtime-2.1" in lines[0]
    assert f"{gauge} {float(days)}" in metrics
    assert "provisioning_groups_on_retiring_models 1.0" in metrics


# ---------------------------------------------------------------------- the mint path's guard


def test_guard_passes_substitutes_or_refuses() -> None:
    before = ModelLifecycle(clock=day("2027-01-19"))
    assert before.guard(OLD).profile is OLD
    assert not before.guard(OLD).substituted
    after = ModelLifecycle(clock=day("2027-03-01"))
    guarded = after.guard(OLD)
    assert guarded.refused is None
    assert guarded.profile["model"] == DEFAULT_MODEL
    assert guarded.profile["audio"]["input"]["transcription"]["model"] == (
        DEFAULT_TRANSCRIPTION_MODEL
    )
    assert guarded.profile["instructions"] == "Be brief."
    assert OLD["model"] == "gpt-realtime", "the group's profile itself is not changed"
    assert {f.model for f in guarded.substituted} == {"gpt-realtime", "gpt-4o-mini-transcribe"}
    refusing = ModelLifecycle(policy="refuse", clock=day("2027-03-01"))
    refused = refusing.guard(OLD).refused
    assert refused is not None
    assert refused.model == "gpt-realtime"
    diarize = {
        "type": "transcription",
        "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe-diarize"}}},
    }
    no_replacement = after.guard(diarize).refused
    assert no_replacement is not None
    assert no_replacement.replacement is None
    assert after.guard({"type": "realtime"}).profile["model"] == DEFAULT_MODEL
    assert "model" not in after.guard({"type": "transcription"}).profile
    odd = {"model": {"not": "a name"}, "audio": {"input": {"transcription": []}}}
    assert after.guard(odd).profile is odd, "an odd profile passes; the upstream judges it"


# ---------------------------------------------------------------------- server, stand-in


@pytest.fixture
async def standin() -> AsyncIterator[StandIn]:
    async with StandIn(StandInConfig(api_key=KEY)) as s:
        yield s


def settings(db_url: str, standin: StandIn, **more: Any) -> Settings:
    return Settings(
        database_url=db_url, upstream_url=standin.base_url, openai_api_key=KEY, port=0, **more
    )


async def device(server: ProvisioningServer, tmp_path: Path, group: str) -> Identity:
    token = server.store.create_token(group)
    return await enroll(server.base_url, token, tmp_path / group, group)


async def mint(server: ProvisioningServer, identity: Identity) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{server.base_url}/v1/realtime/keys",
            json={},
            headers={"Authorization": f"Bearer {identity.token()}"},
        )


async def test_a_mint_past_the_shutdown_gets_the_replacement_loudly(
    db_url: str, standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ProvisioningServer(settings(db_url, standin), clock=day("2027-02-01")) as server:
        server.store.ensure_group("old", OLD)
        identity = await device(server, tmp_path, "old")
        with caplog.at_level(logging.ERROR, logger="provisioning.models"):
            first, second = await mint(server, identity), await mint(server, identity)
        assert (first.status_code, second.status_code) == (200, 200)
        session = first.json()["session"]
        assert session["model"] == DEFAULT_MODEL, "the stand-in minted what it was asked"
        assert session["instructions"] == "Be brief."
        retired = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and "gpt-realtime " in r.getMessage()
        ]
        assert len(retired) == 1, "logged once a minute, not once a mint"
        assert f"minting {DEFAULT_MODEL} instead" in retired[0].getMessage()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.base_url}/metrics")).text
        line = 'provisioning_retired_model_mints_total{model="gpt-realtime",outcome="substituted"}'
        assert f"{line} 2.0" in metrics


async def test_a_mint_past_the_shutdown_is_refused_by_policy(
    db_url: str, standin: StandIn, tmp_path: Path
) -> None:
    refusing = settings(db_url, standin, retired_model="refuse")
    async with ProvisioningServer(refusing, clock=day("2027-02-01")) as server:
        server.store.ensure_group("old", OLD)
        identity = await device(server, tmp_path, "old")
        response = await mint(server, identity)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) == 300
        error = response.json()["error"]
        assert error["code"] == "model_retired"
        assert "gpt-realtime" in error["message"]
        assert "2027-01-20" in error["message"]
        assert not standin.keys, "nothing was minted upstream"


async def test_refresh_from_the_stand_ins_models_list(
    db_url: str, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """The stand-in announces a shutdown for the default model: after a refresh the group
    on it is flagged in the log, ``/metrics`` and the admin API; a config override still
    wins over what the upstream says."""
    pinned = settings(db_url, standin, model_shutdown_dates={"gpt-realtime-2": None})
    async with ProvisioningServer(pinned, clock=day("2026-12-05")) as server:
        watch = server.app.state.models
        standin.models = {DEFAULT_MODEL: "2027-01-04", "gpt-realtime-2": "2027-01-04"}
        assert await watch.refresh()
        lifecycle = watch.lifecycle
        assert lifecycle.shutdown_date(DEFAULT_MODEL) == dt.date(2027, 1, 4)
        assert lifecycle.shutdown_date("gpt-realtime-2") is None
        server.store.ensure_group("new", {"type": "realtime", "model": "gpt-realtime-2"})
        with caplog.at_level(logging.WARNING, logger="provisioning.models"):
            found = watch.check()
        assert sorted(found) == ["default"]
        assert f"group 'default': model {DEFAULT_MODEL} shuts down on 2027-01-04" in caplog.text
        assert "(in 30 days)" in caplog.text
        admin = server.store.create_admin("test")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.base_url}/metrics")).text
            groups = (
                await http.get(
                    f"{server.base_url}/v1/admin/groups",
                    headers={"Authorization": f"Bearer {admin}"},
                )
            ).json()["groups"]
            put = await http.put(
                f"{server.base_url}/v1/admin/groups/old",
                headers={"Authorization": f"Bearer {admin}"},
                json={"profile": {"type": "realtime", "model": "gpt-realtime"}},
            )
        assert (
            'provisioning_group_model_shutdown_days{field="model",group="default",'
            f'model="{DEFAULT_MODEL}",replacement=""}} 30.0'
        ) in metrics
        assert "provisioning_groups_on_retiring_models 1.0" in metrics
        assert "provisioning_model_dates_refreshed_timestamp_seconds 0.0" not in metrics
        assert put.status_code == 200
        assert [w["model"] for w in put.json()["model_warnings"]] == ["gpt-realtime"]
        warnings = {g["name"]: g["model_warnings"] for g in groups}
        assert warnings["new"] == []
        assert warnings["default"][0]["shutdown_date"] == "2027-01-04"
        assert warnings["default"][0]["days_left"] == 30


async def test_a_failed_refresh_keeps_the_table(
    db_url: str, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_key = Settings(database_url=db_url, upstream_url=standin.base_url, openai_api_key="sk-x")
    async with ProvisioningServer(wrong_key, clock=day("2026-12-05")) as server:
        watch = server.app.state.models
        with caplog.at_level(logging.WARNING, logger="provisioning.models"):
            assert not await watch.refresh()
        assert "not refreshed: upstream answered 401" in caplog.text
        assert watch.lifecycle.shutdown_date("gpt-realtime") == dt.date(2027, 1, 20)


# ---------------------------------------------------------------------- groups and the CLI


def test_move_groups_one_or_all_in_one_transaction(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.ensure_group("a", OLD)
        store.ensure_group("b", {"type": "realtime", "model": "gpt-realtime-mini"})
        store.ensure_group(
            "d",
            {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        )
        assert move_groups(store, ["b"], model=DEFAULT_MINI_MODEL) == ["b"]
        with pytest.raises(KeyError):
            move_groups(store, ["b", "missing"], model=DEFAULT_MODEL)
        with store.session() as db:
            assert db.get_one(Group, "b").profile["model"] == DEFAULT_MINI_MODEL, "untouched"
        moved = move_groups(
            store, None, model=DEFAULT_MODEL, transcription=DEFAULT_TRANSCRIPTION_MODEL
        )
        assert moved == ["a", "b", "d"]
        with store.session() as db:
            profiles = {g.name: g.profile for g in db.scalars(select(Group))}
            audits = [
                a.detail for a in db.scalars(select(Audit).where(Audit.action == "group.model"))
            ]
        assert profiles["a"]["model"] == profiles["b"]["model"] == DEFAULT_MODEL
        assert profiles["a"]["instructions"] == "Be brief."
        assert profiles["a"]["audio"]["input"]["transcription"]["model"] == (
            DEFAULT_TRANSCRIPTION_MODEL
        )
        assert "model" not in profiles["d"], "transcription sessions name no speech model"
        assert profiles["d"]["audio"]["input"]["transcription"]["model"] == (
            DEFAULT_TRANSCRIPTION_MODEL
        )
        assert "transcription" not in profiles["b"].get("audio", {}).get("input", {})
        assert {
            "group": "a",
            "before": {"model": "gpt-realtime", "transcription": "gpt-4o-mini-transcribe"},
            "after": {"model": DEFAULT_MODEL, "transcription": DEFAULT_TRANSCRIPTION_MODEL},
        } in audits
        assert move_groups(store, None, model=DEFAULT_MODEL) == [], "nothing left to move"
        assert group_findings(store, ModelLifecycle(clock=day("2026-12-05"))) == {}
    finally:
        store.close()


def test_cli_group_list_warns_and_group_set_moves_the_fleet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The CLI judges against the real clock, so the test's dates are set relative to it."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    soon = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10)).isoformat()
    far = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=400)).isoformat()
    monkeypatch.setenv(
        "PROVISIONING_MODEL_SHUTDOWN_DATES",
        json.dumps({"gpt-realtime": soon, "gpt-realtime-mini": soon, DEFAULT_MODEL: far}),
    )
    for name, model in [
        ("kitchen", "gpt-realtime"),
        ("hall", "gpt-realtime"),
        ("lab", "gpt-realtime-mini"),
    ]:
        profile = json.dumps({"type": "realtime", "model": model})
        assert cli(["--database-url", url, "group", "set", name, "--profile", profile]) == 0
    assert "group 'lab': model gpt-realtime-mini shuts down" in capsys.readouterr().err
    assert cli(["--database-url", url, "group", "list"]) == 0
    out, err = capsys.readouterr()
    assert "kitchen" in out
    assert "hall" in out
    assert f"group 'kitchen': model gpt-realtime shuts down on {soon} (in 10 days)" in err
    assert "provisioning group set lab --model gpt-realtime-2.1-mini" in err
    assert "'default'" not in err
    assert cli(["--database-url", url, "group", "set", "hall", "--model", "gpt-realtime-mini"]) == 0
    assert f"WARNING: gpt-realtime-mini shuts down on {soon}" in capsys.readouterr().err
    assert cli(["--database-url", url, "group", "set", "lab", "--model", DEFAULT_MINI_MODEL]) == 0
    assert "moved 1 group(s): lab" in capsys.readouterr().out
    assert cli(["--database-url", url, "group", "set", "--all", "--model", DEFAULT_MODEL]) == 0
    assert "moved 3 group(s): hall, kitchen, lab" in capsys.readouterr().out
    assert cli(["--database-url", url, "group", "list"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING" not in err
    assert out.count(f'"model": "{DEFAULT_MODEL}"') == 4, "lab too: --all means every group"


def test_cli_group_set_refuses_a_shut_down_or_unknown_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    gone = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    monkeypatch.setenv("PROVISIONING_MODEL_SHUTDOWN_DATES", json.dumps({"gpt-realtime": gone}))
    assert cli(["--database-url", url, "group", "set", "--all", "--model", "gpt-realtime"]) == 65
    assert f"gpt-realtime was shut down on {gone}" in capsys.readouterr().err
    assert (
        cli(["--database-url", url, "group", "set", "default", "--model", "gpt-realtim-2.1"]) == 65
    )
    assert "unknown model 'gpt-realtim-2.1'" in capsys.readouterr().err
    assert cli(["--database-url", url, "group", "set", "nope", "--model", DEFAULT_MODEL]) == 65
    assert "no group 'nope'" in capsys.readouterr().err
    args = ["group", "set", "default", "--model", "gpt-realtime-9", "--force"]
    assert cli(["--database-url", url, *args]) == 0
    assert cli(["--database-url", url, "group", "set", "--all"]) == 64


def test_device_and_server_defaults_are_current() -> None:
    """Device config and server read one catalogue (appliance_common.models); none retires."""
    from appliance import config

    assert config.RealtimeConfig().transcription_model == DEFAULT_TRANSCRIPTION_MODEL
    assert SHUTDOWN_DATES[DEFAULT_TRANSCRIPTION_MODEL] is None
    assert SHUTDOWN_DATES[DEFAULT_MODEL] is None
    store = Store("sqlite://")
    try:
        store.ensure_group("default")
        with store.session() as db:
            assert db.get_one(Group, "default").profile["model"] == DEFAULT_MODEL
    finally:
        store.close()


@pytest.mark.chromium
async def test_dashboard_shows_groups_on_retiring_models(standin: StandIn, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    from tests.browser import CHROMIUM, chromium_args, silent_wav

    url = f"sqlite:///{tmp_path / 'p.db'}"
    async with ProvisioningServer(settings(url, standin), clock=day("2026-12-05")) as server:
        server.store.ensure_group("kitchen", OLD)
        admin = server.store.create_admin()
        silence = silent_wav(tmp_path)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=chromium_args(silence)
            )
            page = await browser.new_page()
            await page.goto(f"{server.base_url}/dashboard")
            await page.fill("#token", admin)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#models li[data-group='kitchen']")
            items = await page.locator("#models li").all_inner_texts()
            await browser.close()
    assert items == [
        "Group kitchen: model gpt-realtime shuts down on 2027-01-20 (in 46 days) — move it: "
        "provisioning group set kitchen --model gpt-realtime-2.1"
    ]
