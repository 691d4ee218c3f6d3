"""tests/benchmarks/run_all.py without running a benchmark: which scripts it runs with which
arguments, that a smoke run never writes the real docs, and that its header links every
section and keeps them all."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).with_name("benchmarks")
URL = ["--postgres-url", "postgresql://postgres@127.0.0.1:5432/test"]


@pytest.fixture
def run_all(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script as its folder's scripts import each other: by name, the folder on the path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("OSTINATO_TEST_POSTGRES_URL", raising=False)
    return importlib.import_module("run_all")


def test_only_a_full_run_writes_the_docs_by_default(run_all: ModuleType) -> None:
    assert run_all.arguments(URL).write_docs is True
    assert run_all.arguments([*URL, "--quick"]).write_docs is False
    assert run_all.arguments([*URL, "--quick", "--write-docs"]).write_docs is True
    assert run_all.arguments([*URL, "--no-write-docs"]).write_docs is False


def test_only_and_skip_keep_the_scripts_order(run_all: ModuleType) -> None:
    only = run_all.arguments([*URL, "--only", "ui", "scheduler"])
    assert [script.name for script in run_all.selected(only)] == ["scheduler", "ui"]
    skip = run_all.arguments([*URL, "--skip", "claims", "ui"])
    assert [script.name for script in run_all.selected(skip)] == [
        "scheduler", "agent", "cli", "sdk", "retention", "sqlite_load"]


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--only", "ui", "--skip", "cli"], []])
def test_refused_without_running_anything(run_all: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit):  # [] measures PostgreSQL, and no URL was given
        run_all.arguments(argv)


def test_sqlite_alone_needs_no_postgresql(run_all: ModuleType) -> None:
    run_all.arguments(["--backend", "sqlite"])
    run_all.arguments(["--only", "cli", "sqlite_load"])


def test_each_script_gets_its_sizes_and_writes_its_section(run_all: ModuleType) -> None:
    scripts = {script.name: script for script in run_all.SCRIPTS}
    quick, full = run_all.arguments([*URL, "--quick"]), run_all.arguments(URL)
    assert run_all.script_arguments(scripts["claims"], full) == [
        "--backend", "both", "--analyze", "--write-docs"]
    assert run_all.script_arguments(scripts["cli"], quick) == ["--runs", "2", "--write-docs"]


def test_a_smoke_run_writes_into_a_copy(run_all: ModuleType, tmp_path: Path) -> None:
    docs = run_all.docs_for(run_all.arguments([*URL, "--quick"]), tmp_path)
    assert docs == tmp_path / "benchmarks.md" != run_all.DOCS
    assert docs.read_text() == run_all.DOCS.read_text()


def test_every_script_has_its_section_in_the_docs(run_all: ModuleType) -> None:
    _, sections = run_all.split_sections(run_all.DOCS.read_text())
    assert [name for name in run_all.NAMES if not run_all.section_of(name, sections)] == []


def test_the_header_links_each_section_and_keeps_them(run_all: ModuleType,
                                                      tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    sections = ("## Web UI\n\n`tests/benchmarks/ui.py`: pages.\n\n| a |\n\n"
                "## Claims\n\n`tests/benchmarks/claims.py`: claims.\n")
    docs.write_text("# Benchmarks\n\nAn older header.\n\n" + sections)
    ran = {"backends": ["sqlite"], "seconds": 65.0,
           "load_average": {"before": [1.0, 1.0, 1.0], "after": [2.5, 1.0, 1.0]}}
    run = {"command": "python tests/benchmarks/run_all.py", "date": "2026-01-01 00:00 UTC",
           "seconds": 1234.0, "quick": False,
           "machine": {"nproc": 2, "cpu": "CPU", "memory_gb": 4.0, "python": "3.11.7",
                       "postgresql": "15.2", "commit": "abc1234"},
           "scripts": [{**ran, "name": "ui", "status": "ok", "section": "Web UI"},
                       {**ran, "name": "claims", "status": "failed (exit 1)",
                        "section": "Claims"},
                       {"name": "cli", "status": "not run", "section": None}]}
    run_all.write_preamble(run_all.header(run), docs)
    text = docs.read_text()
    assert text.endswith(sections) and "An older header" not in text
    assert "PostgreSQL 15.2; code at abc1234" in text and "20 min 34 s" in text
    assert "| `ui.py` | sqlite | ok | 1 min 5 s | 1.0 → 2.5 | [Web UI](#web-ui) |" in text
    assert "| failed (exit 1) |" in text and "[Claims](#claims), from an earlier run" in text
    assert "| `cli.py` | — | not run | — | — | — |" in text
