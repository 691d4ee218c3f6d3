"""Every flow run imports its flow file in a fresh process, so declaring deployments must be cheap.

A run only needs the flow; the schedule arithmetic (croniter, dateutil) and the wire schemas load
when `deployment create` registers what the file declares, and are checked there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ostinato.deploy import Cron, Deployment, flow
from ostinato.deploy.errors import InvalidInput

FLOW_FILE = '''
from ostinato.deploy import Cron, Deployment, Interval, RRule, flow, get_run_logger, task


@task
def double(value: int) -> int:
    return 2 * value


@flow(name="etl")
def etl(day: str = "today", limit: int = 10) -> int:
    get_run_logger().info("loading %s", day)
    return double(limit)


nightly = Deployment(etl, "nightly", parameters={"limit": 100}, tags=["etl"],
                     schedules=[Cron("0 2 * * *", timezone="Europe/Paris"), Interval(3600),
                                RRule("FREQ=WEEKLY;BYDAY=MO", slug="mondays")])
'''

LOADED_ONLY_TO_REGISTER = ("croniter", "dateutil", "ostinato.deploy.schedules",
                           "ostinato.deploy.schemas")


def test_importing_a_flow_file_loads_no_schedule_or_schema_code(tmp_path: Path) -> None:
    (tmp_path / "etl_flows.py").write_text(FLOW_FILE)
    code = ("import json, sys, etl_flows; assert etl_flows.etl() == 20; "
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)
    loaded = set(json.loads(result.stdout)) & set(LOADED_ONLY_TO_REGISTER)
    assert not loaded, f"importing a flow file loaded {sorted(loaded)}"


@flow(name="etl")
def etl(limit: int = 10) -> None:
    pass


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"cron": "0 25 * * *"}, 'hour field "25"'),
    ({"cron": "0 2 * * *", "timezone": "+02:00"}, "IANA"),
])
def test_declared_schedules_are_checked_at_registration(fields: dict[str, str],
                                                        fragment: str) -> None:
    deployment = Deployment(etl, "nightly", schedules=[Cron(**fields)])
    with pytest.raises(InvalidInput) as caught:
        deployment.to_spec(entrypoint="etl.py:etl", path="/srv/flows")
    message = caught.value.message
    assert message.startswith("deployment etl/nightly: invalid schedule:") and fragment in message
    assert "\n" not in message


def test_declared_schedules_register_as_their_models() -> None:
    deployment = Deployment(etl, "nightly", schedules=[Cron("@daily", timezone="Europe/Paris")])
    (schedule,) = deployment.to_spec(entrypoint="etl.py:etl", path="/srv/flows").schedules
    assert (schedule.kind, schedule.cron, schedule.timezone) == ("cron", "@daily", "Europe/Paris")
