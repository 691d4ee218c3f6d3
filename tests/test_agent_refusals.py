"""How an agent takes a server's refusal of a state report: whatever the refusal (409 stale
fencing token, 404 run gone, 403 run no longer in its key's queues), the run is no longer the
agent's — it is lost, not a launch that failed, and is never reported again.

The 403 case is what an agent with an agent key meets after an outage (tests/system: the
PostgreSQL restart scenario): the reaper took its run back and retried it, so the run is in no
queue until claimed again, and the key may not touch it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from ostinato.agent.cache import BundleCache
from ostinato.agent.loop import Agent, AgentOptions, _Held, _sent_now
from ostinato.agent.spool import RunLog
from ostinato.deploy.client import Client


@pytest.mark.parametrize("status", [403, 404, 409])
def test_a_refused_report_makes_the_run_lost(status: int, tmp_path: Path) -> None:
    sent: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(status, json={"detail": "not yours any more"})

    with Client("http://server.test/api", "key", transport=httpx.MockTransport(refuse)) as api:
        agent = Agent(api, AgentOptions(queues=["q"]), BundleCache(tmp_path / "bundles", api))
        held = _Held({"id": "r1", "name": "r1", "fencing_token": 1},
                     RunLog(tmp_path / "r1.jsonl"))
        reply = agent._report(held, "COMPLETED", "success")
        held.log.close()
    assert (reply, held.stop_reason) == (None, "lost")
    assert sent == ["/api/flow-runs/r1/state"], "a refused report is not sent again"


def test_each_attempt_of_a_report_is_stamped_and_a_report_without_a_time_is_about_then() -> None:
    """A RUNNING report retried through an outage (the launch waits for it) says the run
    started when the attempt that got through went out, not when the first one did."""
    first = _sent_now({"state": "RUNNING"})
    time.sleep(0.01)
    later = _sent_now({"state": "RUNNING"})
    assert first["time"] == first["sent"] < later["time"] == later["sent"]
    ended = _sent_now({"state": "COMPLETED", "time": "2030-01-01T00:00:00+00:00"})
    assert ended["time"] == "2030-01-01T00:00:00+00:00" != ended["sent"]
