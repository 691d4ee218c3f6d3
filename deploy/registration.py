"""`deployment create file.py`, as a function: load, validate, bundle, upload, upsert.

Everything that can fail is checked before the single upsert request, and the server applies
that request in one transaction, so a file's deployments are registered together or not at all.
Uploading the bundle first is safe: it is content-addressed and harmless if nothing uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ostinato.deploy.bundles import pack_directory
from ostinato.deploy.client import Client
from ostinato.deploy.deployment import Deployment
from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.loader import LoadedFile, load_file
from ostinato.deploy.schemas import DeploymentSpec

Progress = Callable[[str], None]


def register_file(client: Client, path: Path, *, flags: FlagDeployment | None = None,
                  progress: Progress = lambda _: None) -> dict[str, Any]:
    """Register the file's deployments (or one built from flags); returns the API's result."""
    progress(f"loading {path}")
    loaded = load_file(path)
    declared = [flags.build(loaded)] if flags else loaded.deployments
    if not declared:
        raise InvalidInput(f"{loaded.path}: no Deployment(...) at module level; declare one "
                           "or pass --flow and --name")
    progress(f"bundling {loaded.root}")
    bundle = pack_directory(loaded.root)
    specs = [_spec(loaded, deployment, bundle.sha256) for deployment in declared]
    if client.has_bundle(bundle.sha256):
        progress(f"bundle {bundle.sha256[:12]} already on the server")
    else:
        progress(f"uploading bundle {bundle.sha256[:12]} ({len(bundle.data)} bytes, "
                 f"{bundle.file_count} files)")
        client.upload_bundle(bundle.sha256, bundle.data)
    body = {"deployments": [spec.model_dump(mode="json") for spec in specs]}
    result: dict[str, Any] = client.put("/deployments", body)
    return result


def _spec(loaded: LoadedFile, deployment: Deployment, bundle: str) -> DeploymentSpec:
    return deployment.to_spec(entrypoint=loaded.entrypoint(deployment.flow), bundle=bundle)


@dataclass(frozen=True)
class FlagDeployment:
    """A deployment described by `--flow/--name/--cron/...` instead of declared in the file."""

    flow: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, loaded: LoadedFile) -> Deployment:
        return Deployment(loaded.flow_named(self.flow), self.name, **self.options)
