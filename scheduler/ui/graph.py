"""The run graph of the run detail page, laid out here so the template only draws it.

A Gantt chart of the run's whole tree: one row per task run and one header row per subflow run,
in start order within each flow run, a subflow run's rows right under its header and indented.
x is the time since the tree's first start, on one linear axis for every row, so bars of a
subflow run line up with its parent's. A task run that has not ended reaches `now`; one not
started yet is drawn from when it was submitted (it waits for its upstream). Arrows go from the
end of each upstream task run to the start of the task run that consumed its result.

Pure: times come in as arguments (`now` too), pixels go out; nothing here reads the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ostinato.deploy.schemas import FlowRun, TaskRun
from ostinato.deploy.states import StateType

LABEL_WIDTH = 220.0  # the names' column, left of the time axis
PLOT_WIDTH = 960.0
RIGHT_PAD = 16.0
AXIS_HEIGHT = 24.0
ROW_HEIGHT = 24.0
BAR_HEIGHT = 14.0
INDENT = 12.0  # per subflow level, in the names' column
MIN_BAR = 2.0  # an instant still shows
CHAR_WIDTH = 6.5  # about one character of the 11 px label font
MAX_TICKS = 8
EMPTY = "No task runs reported for this run yet."
# Tick steps in seconds; a longer span steps in whole days.
NICE_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120,
              300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class Task:
    """A task run as the graph needs it; `start` is when it was submitted if it has not
    started."""

    id: UUID
    name: str
    state: StateType
    state_name: str
    start: datetime
    end: datetime | None
    upstream: tuple[UUID, ...]

    @classmethod
    def of(cls, task_run: TaskRun) -> Task:
        submitted = task_run.history[0].timestamp if task_run.history else task_run.created
        return cls(task_run.id, task_run.name, task_run.state, task_run.state_name,
                   task_run.start_time or submitted, task_run.end_time,
                   tuple(task_run.upstream))


@dataclass(frozen=True)
class Flow:
    """A flow run with its task runs and, recursively, its subflow runs."""

    id: UUID
    name: str
    state: StateType
    state_name: str
    start: datetime | None
    end: datetime | None
    tasks: tuple[Task, ...]
    subflows: tuple[Flow, ...]

    @classmethod
    def of(cls, run: FlowRun, task_runs: Iterable[TaskRun], subflows: Iterable[Flow]) -> Flow:
        return cls(run.id, run.name, run.state, run.state_name, run.start_time, run.end_time,
                   tuple(Task.of(task_run) for task_run in task_runs), tuple(subflows))


@dataclass(frozen=True)
class Bar:
    """One row's bar and its label; `seconds` is how long it has lasted so far."""

    id: UUID
    label: str
    name: str
    state: StateType
    state_name: str
    x: float
    y: float
    width: float
    label_x: float
    seconds: float

    @property
    def height(self) -> float:
        return BAR_HEIGHT

    @property
    def text_y(self) -> float:
        return self.y + BAR_HEIGHT - 3

    @property
    def middle(self) -> float:
        return self.y + BAR_HEIGHT / 2


@dataclass(frozen=True)
class Group:
    """A subflow run: its header bar, a frame from its header row to its last row, and what
    it holds."""

    header: Bar
    frame_y: float
    frame_height: float
    bars: tuple[Bar, ...]
    groups: tuple[Group, ...]


@dataclass(frozen=True)
class Arrow:
    source: UUID
    target: UUID
    path: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Graph:
    width: float
    height: float
    bars: tuple[Bar, ...]
    groups: tuple[Group, ...]
    arrows: tuple[Arrow, ...]
    ticks: tuple[Tick, ...]
    message: str | None  # the empty state's line, when there is nothing to draw


@dataclass(frozen=True)
class _Axis:
    origin: datetime
    span: float  # seconds, > 0

    def x(self, moment: datetime) -> float:
        return LABEL_WIDTH + (moment - self.origin).total_seconds() / self.span * PLOT_WIDTH


def layout(root: Flow, now: datetime) -> Graph:
    """Where everything of the run `root` goes, as it stands at `now`."""
    width = LABEL_WIDTH + PLOT_WIDTH + RIGHT_PAD
    if not root.tasks and not root.subflows:
        return Graph(width, AXIS_HEIGHT + ROW_HEIGHT, (), (), (), (), EMPTY)
    axis = _axis(root, now)
    placer = _Placer(axis, now)
    bars, groups = placer.contents(root, depth=0)
    height = AXIS_HEIGHT + placer.rows * ROW_HEIGHT + ROW_HEIGHT / 2
    return Graph(width, height, bars, groups, tuple(placer.arrows(root)), _ticks(axis), None)


def _axis(root: Flow, now: datetime) -> _Axis:
    """From the first start to the last end (`now` for anything still going)."""
    spans = list(_spans(root, now))
    if root.start is not None:
        spans.append((root.start, _end(root.start, root.end, root.state, now)))
    origin = min(start for start, _ in spans)
    last = max(end for _, end in spans)
    return _Axis(origin, (last - origin).total_seconds() or 1.0)


def _spans(flow: Flow, now: datetime) -> Iterator[tuple[datetime, datetime]]:
    for task in flow.tasks:
        yield task.start, _end(task.start, task.end, task.state, now)
    for subflow in flow.subflows:
        start = subflow.start or now
        yield start, _end(start, subflow.end, subflow.state, now)
        yield from _spans(subflow, now)


def _end(start: datetime, end: datetime | None, state: StateType, now: datetime) -> datetime:
    """Its end; `now` while it goes on; its start if it ended without one (nothing to draw)."""
    if end is None:
        end = start if state.is_terminal else now
    return max(start, end)


class _Placer:
    """Hands out rows top to bottom while walking the tree, and keeps each task run's bar for
    the arrows."""

    def __init__(self, axis: _Axis, now: datetime) -> None:
        self.axis = axis
        self.now = now
        self.rows = 0
        self.placed: dict[UUID, Bar] = {}

    def contents(self, flow: Flow, depth: int) -> tuple[tuple[Bar, ...], tuple[Group, ...]]:
        bars: list[Bar] = []
        groups: list[Group] = []
        for item in _in_start_order(flow, self.now):
            if isinstance(item, Task):
                bars.append(self._task(item, depth))
            else:
                groups.append(self._group(item, depth))
        return tuple(bars), tuple(groups)

    def _task(self, task: Task, depth: int) -> Bar:
        bar = self._bar(task, depth)
        self.placed[task.id] = bar
        return bar

    def _group(self, flow: Flow, depth: int) -> Group:
        header = self._bar(flow, depth)
        bars, groups = self.contents(flow, depth + 1)
        margin = (ROW_HEIGHT - BAR_HEIGHT) / 4
        bottom = AXIS_HEIGHT + self.rows * ROW_HEIGHT - margin
        return Group(header, header.y - margin, bottom - header.y + margin, bars, groups)

    def _bar(self, item: Task | Flow, depth: int) -> Bar:
        y = AXIS_HEIGHT + self.rows * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
        self.rows += 1
        start = item.start or self.now
        end = _end(start, item.end, item.state, self.now)
        x = self.axis.x(start)
        label_x = 6 + depth * INDENT
        return Bar(item.id, _shortened(item.name, LABEL_WIDTH - label_x - 8), item.name,
                   item.state, item.state_name, round(x, 1), y,
                   round(max(self.axis.x(end) - x, MIN_BAR), 1), label_x,
                   (end - start).total_seconds())

    def arrows(self, flow: Flow) -> Iterator[Arrow]:
        """One per recorded edge whose both ends are drawn (an edge given twice is one)."""
        for task in flow.tasks:
            for source in dict.fromkeys(task.upstream):
                if source in self.placed:
                    yield Arrow(source, task.id, _curve(self.placed[source], self.placed[task.id]))
        for subflow in flow.subflows:
            yield from self.arrows(subflow)


def _in_start_order(flow: Flow, now: datetime) -> list[Task | Flow]:
    items: list[Task | Flow] = [*flow.tasks, *flow.subflows]
    return sorted(items, key=lambda item: (item.start or now, item.name))


def _shortened(name: str, room: float) -> str:
    fits = max(int(room / CHAR_WIDTH), 4)
    return name if len(name) <= fits else name[:fits - 1] + "…"


def _curve(source: Bar, target: Bar) -> str:
    """From the source's end to the target's start; bends out and back when the target
    starts before the source ends (a task run waiting since before its upstream ended)."""
    x1, y1 = source.x + source.width, source.middle
    x2, y2 = target.x, target.middle
    bend = max((x2 - x1) / 2, 16.0)
    return (f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} "
            f"{x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}")


def _ticks(axis: _Axis) -> tuple[Tick, ...]:
    step = next((s for s in NICE_STEPS if axis.span / s <= MAX_TICKS),
                -(-axis.span // (MAX_TICKS * 86400)) * 86400)
    count = int(axis.span / step + 1e-9) + 1
    return tuple(Tick(round(LABEL_WIDTH + n * step / axis.span * PLOT_WIDTH, 1),
                      _offset(n * step, step)) for n in range(count))


def _offset(seconds: float, step: float) -> str:
    """A tick's time since the start in the unit of the step: `0`, `250ms`, `90s`, `5m`."""
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if step >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:.0f}ms"
