"""Loading a flow file for `deployment create`: import it and find what it declares.

The file is imported under a private module name with its folder first on `sys.path`, so it can
import its sibling modules the way it will when an agent runs it from the bundle. Every way the
import can fail becomes one InvalidInput line naming the file.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ostinato.deploy.deployment import Deployment
from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.flows import Flow


@dataclass(frozen=True)
class LoadedFile:
    """A flow file: its folder (the bundle root), its flows and its declared deployments."""

    path: Path
    root: Path
    module: ModuleType
    flows: dict[str, Flow[..., Any]]
    deployments: list[Deployment]

    def entrypoint(self, flow: Flow[..., Any]) -> str:
        """`relative/file.py:attribute` of the flow, relative to the bundle root."""
        source = Path(inspect.getfile(flow.fn)).resolve()
        try:
            relative = source.relative_to(self.root)
        except ValueError:
            raise InvalidInput(
                f"flow {flow.name!r} is defined in {source}, outside {self.root}; "
                "keep flows inside the folder that is bundled"
            ) from None
        module = sys.modules.get(flow.fn.__module__)
        names = [k for k, v in vars(module).items() if v is flow] if module else []
        return f"{relative.as_posix()}:{names[0] if names else flow.fn.__name__}"

    def flow_named(self, name: str) -> Flow[..., Any]:
        if name in self.flows:
            return self.flows[name]
        known = ", ".join(sorted(self.flows)) or "none"
        raise InvalidInput(f"no flow named {name!r} in {self.path} (flows found: {known})")


def load_file(path: Path) -> LoadedFile:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    if path.suffix != ".py":
        raise InvalidInput(f"{path}: not a Python file")
    module = _import(path)
    flows: dict[str, Flow[..., Any]] = {}
    for attribute, member in vars(module).items():
        if isinstance(member, Flow):
            flows.setdefault(member.name, member)
            flows.setdefault(attribute, member)
    deployments = [m for m in vars(module).values() if isinstance(m, Deployment)]
    return LoadedFile(path, path.parent, module, flows, deployments)


def _import(path: Path) -> ModuleType:
    name = f"ostinato_flow_file_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise InvalidInput(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.message}") from None
    except BaseException as exc:  # noqa: BLE001 (user code may raise anything, even SystemExit)
        raise InvalidInput(f"{path}: importing it failed: {_describe(exc)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _describe(exc: BaseException) -> str:
    """`Type: message (file:line)` of the innermost frame, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{where}".replace(": (", " (")
