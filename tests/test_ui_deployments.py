"""The deployments pages (DESIGN.md §8) on a real server, on SQLite and PostgreSQL: the list with
schedules in words, next and last runs, paused badges and tags, read in a number of statements
that does not grow with the deployments; one deployment's settings, the next 10 instants of each
schedule, recent runs, Pause/Resume, and the "Run now" form generated from its parameter schema;
an unknown deployment's 404."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import event

from ostinato.deploy.states import StateType
from ostinato.queues import deployments
from tests.conftest import RunningServer
from tests.html_parts import Element
from tests.test_ui_dashboard import add_runs, page

SCHEMA = {
    "type": "object",
    "properties": {
        "day": {"type": "string", "description": "The day to load"},
        "limit": {"type": "integer"},
        "ratio": {"type": "number", "default": 0.5},
        "dry_run": {"type": "boolean", "default": False},
        "mode": {"$ref": "#/$defs/Mode", "default": "slow"},
        "items": {"type": "array", "items": {"type": "integer"}, "default": [1, 2]},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    },
    "required": ["day", "limit"],
    "$defs": {"Mode": {"enum": ["fast", "slow"], "type": "string"}},
}
NIGHTLY = {
    "flow": "etl", "name": "nightly", "entrypoint": "flows.py:etl", "path": "/srv/flows",
    "description": "Loads yesterday's orders", "parameters": {"day": "today", "limit": 10},
    "parameter_schema": SCHEMA, "tags": ["etl", "nightly"], "overlap": "skip", "retries": 2,
    "timeout": 600,
    "schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/Paris"},
                  {"kind": "cron", "cron": "30 9 * * 1-5", "timezone": "Asia/Tokyo"},
                  {"kind": "interval", "every": 3600, "active": False}],
}
HOURLY = {"flow": "etl", "name": "hourly", "entrypoint": "flows.py:etl", "path": "/srv/flows",
          "tags": ["etl"], "schedules": [{"kind": "interval", "every": 7200}]}
ADHOC = {"flow": "report", "name": "adhoc", "entrypoint": "r.py:report", "path": "/srv/r",
         "paused": True}


def apply(server: RunningServer, *specs: dict[str, Any]) -> None:
    with server.client() as http:
        http.put("/deployments", json={"deployments": list(specs)}).raise_for_status()


def post(server: RunningServer, path: str, body: dict[str, Any] | None = None) -> Any:
    with server.client() as http:
        response = http.post(path, json=body)
    response.raise_for_status()
    return response.json()


def cells(html: Element, name: str) -> dict[str, Element]:
    row = html.by_id("deployments-list").find_all("tr", data_deployment=name)[0]
    return {cell.attrs.get("class", "name"): cell for cell in row.find_all("td")}


def test_the_list_shows_schedules_in_words_next_and_last_runs_pause_and_tags(
        server: RunningServer) -> None:
    apply(server, NIGHTLY, HOURLY, ADHOC)
    now = datetime.now(UTC).replace(microsecond=0)
    post(server, "/deployments/etl/nightly/runs",
         {"scheduled_time": (now + timedelta(minutes=10)).isoformat()})
    with server.database.read() as conn:
        hourly = deployments.get(conn, "etl/hourly")
    _, last = add_runs(server.database, hourly, StateType.FAILED, now - timedelta(hours=3),
                       now - timedelta(hours=1))

    html = page(server, "/deployments")

    rows = html.by_id("deployments-list").find_all("tr")[1:]
    assert [row.attrs["data-deployment"] for row in rows] == [
        "etl/hourly", "etl/nightly", "report/adhoc"]
    row = cells(html, "etl/nightly")
    assert row["name"].text == "etl/nightly"
    assert row["name"].find_all("a")[0].attrs["href"] == "/deployments/etl/nightly"
    assert [div.text for div in row["schedules"].find_all("div")] == [
        "at 02:00 every day, Europe/Paris", "at 09:30 Monday to Friday, Asia/Tokyo",
        "every hour (inactive)"]
    assert row["next-run"].text == (now + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S")
    assert row["last-run"].text == "-" and row["tags"].text == "etl, nightly"

    row = cells(html, "etl/hourly")
    assert row["schedules"].text == "every 2 hours" and row["next-run"].text == "-"
    assert [a.attrs["href"] for a in row["last-run"].find_all("a")] == [f"/runs/{last}"]
    assert row["last-run"].find_all("span", class_="badge FAILED")[0].text == "Failed"

    row = cells(html, "report/adhoc")
    assert row["name"].text == "report/adhoc paused"
    assert row["schedules"].text == "manual runs only" and row["tags"].text == "-"
    assert not cells(html, "etl/nightly")["name"].find_all("span", class_="badge paused")


def test_a_late_run_is_the_last_run_and_named_late(server: RunningServer) -> None:
    apply(server, HOURLY)
    with server.database.read() as conn:
        hourly = deployments.get(conn, "etl/hourly")
    add_runs(server.database, hourly, StateType.SCHEDULED, datetime.now(UTC) - timedelta(hours=1))

    badge = cells(page(server, "/deployments"), "etl/hourly")["last-run"].find_all("span")[0]
    assert badge.attrs["class"] == "badge SCHEDULED" and badge.text == "Late"


@contextmanager
def statements(server: RunningServer) -> Iterator[list[str]]:
    """The SQL statements the server runs meanwhile."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    engine = server.database.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_the_list_reads_the_runs_in_a_few_statements_however_many_deployments(
        server: RunningServer) -> None:
    """No statement per deployment: 2 and 12 deployments, each with runs, cost the same."""
    counts = []
    for total in (2, 12):
        specs = [HOURLY | {"name": f"d{n}"} for n in range(total)]
        apply(server, *specs)
        with server.database.read() as conn:
            found = [deployments.get(conn, f"etl/d{n}") for n in range(total)]
        for deployment in found:
            add_runs(server.database, deployment, StateType.COMPLETED,
                     datetime.now(UTC) - timedelta(minutes=5))
        with statements(server) as seen:
            html = page(server, "/deployments")
        assert len(html.by_id("deployments-list").find_all("span", class_="badge COMPLETED")
                   ) == total
        counts.append(len(seen))
    assert counts[0] == counts[1], counts


def weekdays_at_0930_tokyo(after: datetime) -> list[str]:
    """The next 10 weekdays' 09:30 in Tokyo (no DST there) after `after`, as the API writes
    instants: worked out day by day, not with the schedule's own arithmetic."""
    tokyo = ZoneInfo("Asia/Tokyo")
    day = after.astimezone(tokyo).replace(hour=9, minute=30, second=0, microsecond=0)
    found: list[str] = []
    while len(found) < 10:
        if day.weekday() < 5 and day > after:
            found.append(day.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        day += timedelta(days=1)
    return found


def instants(html: Element, slug: str) -> list[str]:
    part = html.by_id("deployment-schedules").find_all("div", data_schedule=slug)[0]
    return [time.attrs["datetime"] for time in part.find_all("time")]


def slugs(server: RunningServer, name: str) -> list[str]:
    with server.database.read() as conn:
        return [s.slug for s in deployments.get(conn, name).schedules]


def test_the_detail_shows_settings_and_the_next_10_instants_of_each_schedule(
        server: RunningServer) -> None:
    apply(server, NIGHTLY)
    paris, tokyo, inactive = slugs(server, "etl/nightly")
    before = datetime.now(UTC)

    html = page(server, "/deployments/etl/nightly")

    after = datetime.now(UTC)
    assert html.find_all("h1")[0].text == "Deployment etl/nightly"
    settings = {row.find_all("th")[0].text: row.find_all("td")[0].text
                for row in html.find_all("table", class_="fields")[0].find_all("tr")}
    assert settings["Description"] == "Loads yesterday's orders"
    assert settings["Entrypoint"] == "flows.py:etl" and settings["Source"] == "path /srv/flows"
    assert settings["Parameters"] == '{"day": "today", "limit": 10}'
    assert settings["Tags"] == "etl, nightly" and settings["Overlap"] == "skip"
    assert settings["Catch-up"].startswith("latest") and settings["Retries"].startswith("2 ")
    assert settings["Timeout"] == "10m 00s"
    words = [s.text for s in html.by_id("deployment-schedules").find_all("strong")]
    assert words == ["at 02:00 every day, Europe/Paris", "at 09:30 Monday to Friday, Asia/Tokyo",
                     "every hour (inactive)"]
    assert instants(html, tokyo) in (weekdays_at_0930_tokyo(before),
                                     weekdays_at_0930_tokyo(after))
    assert len(instants(html, paris)) == 10 and instants(html, inactive) == []
    for moment in instants(html, paris):  # 02:00 in Paris, on 10 days in a row
        local = datetime.fromisoformat(moment).astimezone(ZoneInfo("Europe/Paris"))
        assert (local.hour, local.minute) in ((2, 0), (3, 0))  # 03:00 if 02:00 does not exist
    days = [datetime.fromisoformat(m).date() for m in instants(html, paris)]
    assert all((b - a).days == 1 for a, b in zip(days, days[1:], strict=False))


def test_the_same_instants_as_the_api(server: RunningServer) -> None:
    """The page and `GET …/upcoming` share their arithmetic: the Tokyo schedule alone."""
    apply(server, NIGHTLY | {"schedules": [NIGHTLY["schedules"][1]]})
    (slug,) = slugs(server, "etl/nightly")
    shown = instants(page(server, "/deployments/etl/nightly"), slug)
    with server.client() as http:
        listed = http.get("/deployments/etl/nightly/upcoming", params={"n": 10}).json()
    assert shown == [i["scheduled_time"] for i in listed]


def run_form(html: Element) -> Element:
    (form,) = [f for f in html.find_all("form") if "data-run-now" in f.attrs]
    return form


def parameters(html: Element) -> dict[str, Element]:
    return {e.attrs["data-parameter"]: e for e in run_form(html).find_all()
            if "data-parameter" in e.attrs}


def test_the_run_form_follows_the_parameter_schema(server: RunningServer) -> None:
    apply(server, NIGHTLY)

    html = page(server, "/deployments/etl/nightly")

    form = run_form(html)
    assert form.attrs["action"] == "/api/deployments/etl/nightly/runs"
    assert [b.text for b in form.find_all("button")] == ["Run now"]
    inputs = parameters(html)
    assert list(inputs) == ["day", "limit", "dry_run", "items", "mode", "note", "ratio"]
    shape = {name: (e.tag, e.attrs.get("type"), e.attrs["data-type"], "required" in e.attrs)
             for name, e in inputs.items()}
    assert shape == {
        "day": ("input", "text", "string", True), "limit": ("input", "number", "integer", True),
        "ratio": ("input", "number", "number", False),
        "dry_run": ("input", "checkbox", "boolean", False),
        "mode": ("select", None, "string", False), "items": ("textarea", None, "json", False),
        "note": ("input", "text", "string", False)}
    # Prefilled with what a run gets without the form: the deployment's value, else the flow's.
    assert inputs["day"].attrs["value"] == "today" and inputs["limit"].attrs["value"] == "10"
    assert inputs["limit"].attrs["step"] == "1" and inputs["ratio"].attrs["step"] == "any"
    assert inputs["ratio"].attrs["value"] == "0.5" and "checked" not in inputs["dry_run"].attrs
    options = [(o.attrs["value"], "selected" in o.attrs) for o in inputs["mode"].find_all("option")]
    assert options == [("fast", False), ("slow", True)]
    assert inputs["items"].text == "[1, 2]" and inputs["note"].attrs["value"] == ""
    assert "The day to load" in form.text


def test_a_required_enum_without_default_offers_an_empty_choice(server: RunningServer) -> None:
    schema = {"properties": {"level": {"enum": [1, 2, 3]}, "on": {"type": "boolean",
                                                                 "default": True}},
              "required": ["level"]}
    apply(server, ADHOC | {"parameter_schema": schema})  # no schedule needs a level

    inputs = parameters(page(server, "/deployments/report/adhoc"))

    level = inputs["level"]
    assert level.attrs["data-type"] == "integer" and "required" in level.attrs
    assert [(o.attrs["value"], "selected" in o.attrs) for o in level.find_all("option")] == [
        ("", True), ("1", False), ("2", False), ("3", False)]
    assert "checked" in inputs["on"].attrs


def refreshing(html: Element) -> list[Element]:
    return [e for e in html.find_all() if "data-refresh" in e.attrs]


def test_pause_resume_and_recent_runs_are_refreshing_parts_the_form_is_not(
        server: RunningServer) -> None:
    apply(server, NIGHTLY)
    run = post(server, "/deployments/etl/nightly/runs", {})

    html = page(server, "/deployments/etl/nightly")

    assert {e.attrs["id"] for e in refreshing(html)} == {
        "deployment-status", "deployment-schedules", "deployment-runs"}
    assert all(not e.find_all("form") and not e.find_all(id="flash") for e in refreshing(html))
    assert html.by_id("flash").attrs["class"] == "flash"
    (button,) = html.by_id("deployment-status").find_all("button")
    assert (button.text, button.attrs["data-action"]) == (
        "Pause", "/api/deployments/etl/nightly/pause")
    recent = html.by_id("deployment-runs")
    assert [a.attrs["href"] for a in recent.find_all("a")] == [f"/runs/{run['id']}"]

    post(server, "/deployments/etl/nightly/pause")
    part = page(server, "/deployments/etl/nightly", **{"X-Ostinato-Fragment": "1"})

    assert not part.find_all("html") and not part.find_all("header")
    status = part.by_id("deployment-status")
    (button,) = status.find_all("button")
    assert (button.text, button.attrs["data-action"], button.attrs["data-done"]) == (
        "Resume", "/api/deployments/etl/nightly/resume", "resumed")
    assert status.find_all("span", class_="badge paused")[0].text == "paused"
    # Pausing skipped the waiting run; the runs part says so.
    assert part.by_id("deployment-runs").find_all("span", class_="badge SKIPPED")


def test_recent_runs_are_the_last_20_scheduled_until_now(server: RunningServer) -> None:
    apply(server, HOURLY)
    with server.database.read() as conn:
        hourly = deployments.get(conn, "etl/hourly")
    now = datetime.now(UTC)
    times = [now - timedelta(hours=n) for n in range(1, 26)]
    ids = add_runs(server.database, hourly, StateType.COMPLETED, *times)
    add_runs(server.database, hourly, StateType.SCHEDULED, now + timedelta(hours=1))  # not yet

    recent = page(server, "/deployments/etl/hourly").by_id("deployment-runs")

    rows = recent.find_all("tr")[1:]
    assert [row.attrs["data-run-id"] for row in rows] == [str(i) for i in ids[:20]]
    assert all(row.find_all("td")[3].text == "-" for row in rows)  # never started


def test_a_duration_is_from_start_to_end(server: RunningServer) -> None:
    apply(server, HOURLY)
    with server.database.read() as conn:
        hourly = deployments.get(conn, "etl/hourly")
    now = datetime.now(UTC)
    add_runs(server.database, hourly, StateType.COMPLETED, now - timedelta(minutes=2),
             start_time=now - timedelta(seconds=90), end_time=now - timedelta(seconds=77.7))

    (row,) = page(server, "/deployments/etl/hourly").by_id("deployment-runs").find_all("tr")[1:]
    assert row.find_all("td")[3].text == "12.3 s"


def test_an_unknown_deployment_is_a_404_page(server: RunningServer) -> None:
    html = page(server, "/deployments/etl/missing", status=404)

    assert html.find_all("h1")[0].text == "Deployment not found"
    (message,) = html.find_all("p", class_="error")
    assert message.text == "deployment 'etl/missing' not found"
