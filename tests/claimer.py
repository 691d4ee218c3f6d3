"""A bare claimer process for contention tests and the claims benchmark: registers as an agent,
claims over HTTP, optionally runs each run through RUNNING to COMPLETED, and writes what it
claimed as JSON. It imports nothing but httpx, so sixteen of them start in moments.

    python tests/claimer.py API NAME -q QUEUE [-q QUEUE] [--limit N] [--wait S] [--finish]
                            (--stop-file PATH | --until-empty) --out PATH
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx


def main() -> None:
    args = _arguments()
    claimed: list[str] = []
    claims = 0
    with httpx.Client(base_url=args.api, timeout=args.wait + 30) as client:
        agent = _ok(client.post("/agents", json={"name": args.name, "host": "claimer",
                                                  "queues": args.queue}))
        started = time.monotonic()
        while not (args.stop_file and args.stop_file.exists()):
            batch = _ok(client.post("/claims", json={
                "agent_id": agent["id"], "queues": args.queue, "limit": args.limit,
                "wait_seconds": args.wait}))
            claims += 1
            if not batch and args.until_empty:
                break
            if args.finish:
                _finish(client, batch)
            claimed += [run["id"] for run in batch]
        elapsed = time.monotonic() - started
    args.out.write_text(json.dumps({"claimed": claimed, "claims": claims, "seconds": elapsed}))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("api")
    parser.add_argument("name")
    parser.add_argument("-q", "--queue", action="append", required=True)
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--wait", type=float, default=0)
    parser.add_argument("--finish", action="store_true", help="report RUNNING, then COMPLETED")
    parser.add_argument("--stop-file", type=Path)
    parser.add_argument("--until-empty", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def _finish(client: httpx.Client, batch: list[dict[str, Any]]) -> None:
    for state in ("RUNNING", "COMPLETED"):
        for run in batch:
            _ok(client.post(f"/flow-runs/{run['id']}/state",
                            json={"state": state, "fencing_token": run["fencing_token"]}))


def _ok(response: httpx.Response) -> Any:
    if not response.is_success:
        raise SystemExit(f"{response.request.method} {response.request.url}: "
                         f"{response.status_code} {response.text}")
    return response.json()


if __name__ == "__main__":
    main()
