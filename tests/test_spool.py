"""The agent's on-disk spool of a run's unsent log lines: order, batches, the cap, cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ostinato.agent.spool import RunLog
from ostinato.deploy.limits import MAX_BATCH_BYTES, MAX_LOG_BATCH


def _line(n: int) -> dict[str, Any]:
    return {"timestamp": "2026-11-28T10:00:00+00:00", "level": 20, "logger": "x",
            "message": f"line {n:04}"}


def _drain(spool: RunLog) -> list[str]:
    """Everything unsent, batch by batch, as the server would receive it."""
    messages: list[str] = []
    while spool.pending:
        lines, position = spool.batch()
        assert 0 < len(lines) <= MAX_LOG_BATCH
        messages += [line["message"] for line in lines]
        spool.sent(position)
    return messages


def test_lines_leave_in_order_in_batches_and_the_file_empties(tmp_path: Path) -> None:
    spool = RunLog(tmp_path / "run.jsonl")
    for n in range(MAX_LOG_BATCH + 5):
        spool.append(_line(n))
    assert _drain(spool) == [f"line {n:04}" for n in range(MAX_LOG_BATCH + 5)]
    assert spool.path.stat().st_size == 0
    spool.append(_line(7))
    assert _drain(spool) == ["line 0007"]


def test_a_batch_stops_growing_past_its_byte_cap(tmp_path: Path) -> None:
    """Long lines make fewer lines per batch, so an event batch stays far below the server's
    cap on its body; `full` says lines were left for the next batch."""
    spool = RunLog(tmp_path / "run.jsonl")
    line = _line(0) | {"message": "x" * (MAX_BATCH_BYTES // 4)}
    for _ in range(10):
        spool.append(line)
    sizes = []
    while spool.pending:
        lines, position = spool.batch()
        sizes.append((len(lines), spool.full))
        spool.sent(position)
    assert sizes == [(4, True), (4, True), (2, False)]


def test_an_unconfirmed_batch_is_sent_again(tmp_path: Path) -> None:
    spool = RunLog(tmp_path / "run.jsonl")
    spool.append(_line(1))
    first, _ = spool.batch()  # the send failed: never confirmed
    spool.append(_line(2))
    assert [line["message"] for line in first] == ["line 0001"]
    assert _drain(spool) == ["line 0001", "line 0002"]


def test_past_the_cap_lines_are_counted_and_the_count_is_sent(tmp_path: Path) -> None:
    one = len(b'{"timestamp": "2026-11-28T10:00:00+00:00", "level": 20, "logger": "x", '
              b'"message": "line 0000"}\n')
    spool = RunLog(tmp_path / "run.jsonl", max_bytes=3 * one)
    for n in range(10):
        spool.append(_line(n))
    sent = _drain(spool)
    assert sent[:3] == ["line 0000", "line 0001", "line 0002"]
    assert len(sent) == 4 and sent[3].startswith("7 log lines were dropped")
    spool.append(_line(10))
    assert _drain(spool) == ["line 0010"]  # the count was reported once


def test_close_removes_the_file_and_later_lines_are_ignored(tmp_path: Path) -> None:
    spool = RunLog(tmp_path / "spool" / "run.jsonl")
    spool.append(_line(1))
    spool.close()
    spool.append(_line(2))
    assert not spool.path.exists()
