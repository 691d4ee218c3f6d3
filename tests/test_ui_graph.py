"""The run graph's layout (scheduler/ui/graph.py) with explicit times: one bar per task run at
the x its times give, one arrow per recorded edge, subflow runs nested as groups, open task runs
reaching `now`, and an empty state for a run with nothing to draw."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ostinato.deploy.schemas import TaskRun, TaskRunState
from ostinato.deploy.states import StateType
from ostinato.scheduler.ui import graph
from ostinato.scheduler.ui.graph import LABEL_WIDTH, PLOT_WIDTH, Bar, Flow, Graph, Group, Task

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)
RIGHT_EDGE = LABEL_WIDTH + PLOT_WIDTH
S = StateType


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def task(name: str, start: float, end: float | None, state: StateType = S.COMPLETED,
         upstream: tuple[Task, ...] = ()) -> Task:
    return Task(uuid.uuid4(), name, state, state.display_name, at(start),
                None if end is None else at(end), tuple(t.id for t in upstream))


def flow(name: str, start: float | None, end: float | None, *tasks: Task,
         subflows: tuple[Flow, ...] = (), state: StateType = S.COMPLETED) -> Flow:
    return Flow(uuid.uuid4(), name, state, state.display_name,
                None if start is None else at(start), None if end is None else at(end),
                tasks, subflows)


def all_bars(bars: tuple[Bar, ...], groups: tuple[Group, ...]) -> list[Bar]:
    """Every task run's bar, those inside subflow groups included."""
    inner = [bar for group in groups for bar in all_bars(group.bars, group.groups)]
    return [*bars, *inner]


def bars_of(drawn: Graph) -> dict[str, Bar]:
    found = all_bars(drawn.bars, drawn.groups)
    assert len({bar.id for bar in found}) == len(found)  # one bar per task run
    return {bar.name: bar for bar in found}


def test_one_bar_per_task_run_placed_by_its_times() -> None:
    a, b = task("a", 0, 10), task("b", 50, 100, S.FAILED)
    drawn = graph.layout(flow("etl", 0, 100, b, a), now=at(500))
    bars = bars_of(drawn)
    assert set(bars) == {"a", "b"} and drawn.message is None
    assert (bars["a"].x, bars["a"].width) == (LABEL_WIDTH, PLOT_WIDTH / 10)
    assert (bars["b"].x, bars["b"].width) == (LABEL_WIDTH + PLOT_WIDTH / 2, PLOT_WIDTH / 2)
    assert bars["b"].state is S.FAILED and bars["b"].seconds == 50
    assert bars["a"].y < bars["b"].y  # rows in start order, not in the order reported
    assert [tick.label for tick in drawn.ticks] == ["0", "15s", "30s", "45s", "60s", "75s",
                                                    "90s"]
    assert drawn.ticks[2].x == LABEL_WIDTH + PLOT_WIDTH * 30 / 100


def test_a_diamond_has_one_arrow_per_edge_from_end_to_start() -> None:
    top = task("top", 0, 2)
    left, right = task("left", 2, 4, upstream=(top,)), task("right", 2, 5, upstream=(top,))
    join = task("join", 5, 6, upstream=(left, right, left))  # a repeated edge is one edge
    stray = task("stray", 6, 7, upstream=(Task(uuid.uuid4(), "gone", S.COMPLETED, "Completed",
                                                at(0), at(1), ()),))
    drawn = graph.layout(flow("diamond", 0, 7, top, left, right, join, stray), now=at(60))
    edges = {(arrow.source, arrow.target) for arrow in drawn.arrows}
    assert len(drawn.arrows) == len(edges) == 4
    assert edges == {(top.id, left.id), (top.id, right.id), (left.id, join.id),
                     (right.id, join.id)}
    bars = bars_of(drawn)
    first = next(a for a in drawn.arrows if a.target == left.id)
    start = f"M{bars['top'].x + bars['top'].width:.1f},{bars['top'].middle:.1f} "
    assert first.path.startswith(start)
    assert first.path.endswith(f" {bars['left'].x:.1f},{bars['left'].middle:.1f}")


def test_subflow_runs_nest_with_their_task_runs_recursively() -> None:
    inner = flow("inner", 20, 30, task("deep", 22, 28))
    outer = flow("outer", 10, 40, task("s1", 11, 15), task("s2", 15, 35), subflows=(inner,))
    root = flow("root", 0, 50, task("before", 0, 5), task("after", 45, 50), subflows=(outer,))
    drawn = graph.layout(root, now=at(100))
    [group] = drawn.groups
    assert group.header.id == outer.id and [b.name for b in group.bars] == ["s1", "s2"]
    [nested] = group.groups
    assert nested.header.id == inner.id and [b.name for b in nested.bars] == ["deep"]
    assert [b.name for b in drawn.bars] == ["before", "after"]
    bars = bars_of(drawn)
    assert bars["deep"].label_x > bars["s1"].label_x > bars["before"].label_x
    # Rows top to bottom: before, outer, s1, s2, inner, deep, after.
    assert bars["before"].y < group.header.y < bars["s1"].y < nested.header.y < bars["deep"].y
    assert bars["deep"].y < bars["after"].y
    assert group.frame_y < group.header.y
    assert group.frame_y + group.frame_height > bars["deep"].y + bars["deep"].height
    assert group.frame_y + group.frame_height < bars["after"].y
    assert group.header.x == LABEL_WIDTH + PLOT_WIDTH * 10 / 50


def test_task_runs_still_going_reach_now() -> None:
    running = task("running", 10, None, S.RUNNING)
    drawn = graph.layout(flow("live", 0, None, task("done", 0, 10), running, state=S.RUNNING),
                         now=at(40))
    bar = bars_of(drawn)["running"]
    assert bar.x == LABEL_WIDTH + PLOT_WIDTH / 4
    assert bar.x + bar.width == pytest.approx(RIGHT_EDGE)
    assert bar.seconds == 30 and bar.state is S.RUNNING


def test_a_task_run_not_started_is_drawn_from_when_it_was_submitted() -> None:
    submitted = TaskRunState(type=S.PENDING, name="Pending", timestamp=at(5), attempt=1,
                             message=None)
    waiting = TaskRun(id=uuid.uuid4(), flow_run_id=uuid.uuid4(), name="wait-1", task_key="wait",
                      tags=[], upstream=[], state=S.PENDING, state_name="Pending", attempt=1,
                      start_time=None, end_time=None, error=None, result=None,
                      history=[submitted], created=at(6))
    converted = Task.of(waiting)
    assert converted.start == at(5) and converted.end is None
    bar = bars_of(graph.layout(flow("f", 0, None, converted, state=S.RUNNING), now=at(10)))
    assert bar["wait-1"].x == LABEL_WIDTH + PLOT_WIDTH / 2
    assert bar["wait-1"].x + bar["wait-1"].width == pytest.approx(RIGHT_EDGE)


def test_an_instant_still_shows_and_long_names_are_shortened() -> None:
    name = "a-task-with-a-name-far-too-long-for-the-column-of-labels"
    drawn = graph.layout(flow("f", 0, 0, task(name, 0, 0)), now=at(5))
    bar = bars_of(drawn)[name]
    assert bar.width == graph.MIN_BAR
    assert bar.label.endswith("…") and len(bar.label) < len(name)


def test_a_run_with_no_task_runs_gives_the_empty_state() -> None:
    drawn = graph.layout(flow("quiet", 0, 10), now=at(20))
    assert drawn.message == graph.EMPTY
    assert drawn.bars == drawn.groups == drawn.arrows == drawn.ticks == ()
