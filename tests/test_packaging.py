"""The layout of STYLE.md holds: pyproject lists exactly our packages, each imports by its name."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("agent", "cli", "deploy", "queues", "scheduler")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT).parts
            found.add(".".join(("ostinato", *relative)))
    return found


def test_packages_list_matches_the_folders_with_an_init() -> None:
    declared = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert declared == _packages_on_disk()


def test_package_dir_maps_each_top_folder() -> None:
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {f"ostinato.{folder}": folder for folder in FOLDERS}


def _modules() -> list[str]:
    names = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts and parts[-1] != "__init__":
                continue  # migration scripts run inside Alembic, not on import
            if "examples" in parts:
                continue  # flow files, run by path, not imported as modules
            names.append(".".join(("ostinato", *parts)).removesuffix(".__init__"))
    return names


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports_by_its_ostinato_name(module: str) -> None:
    imported = importlib.import_module(module)
    assert Path(imported.__file__ or "").resolve().is_relative_to(ROOT)
