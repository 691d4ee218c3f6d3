"""HTTPS end to end: `ostinato server start --ssl-certfile/--ssl-keyfile` as a real process, with a
certificate for 127.0.0.1 signed by a private CA made here with `openssl`; the CLI and an agent
trust that CA through OSTINATO_CA_BUNDLE or `--ca-bundle`, and every mistake is one line.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, server_subprocess
from tests.test_cli import assert_user_error, cli

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "hello.py"
SERVER_EXTENSIONS = """\
subjectAltName=IP:127.0.0.1
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
"""


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the private CA's certificate: what clients must trust
    cert: Path  # the server's certificate, for IP 127.0.0.1, signed by the CA
    key: Path  # the server's private key


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_certificates(folder: Path) -> Certificates:
    """A CA and a server certificate signed by it (EC keys: made in milliseconds)."""
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Ostinato test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("req", *curve, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
             cwd=folder)
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return _make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def https_url(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """The API of an `ostinato server start` serving HTTPS only, on SQLite."""
    folder = tmp_path_factory.mktemp("server")
    with server_subprocess(f"sqlite:///{folder / 'ostinato.db'}", folder,
                           "--ssl-certfile", str(certificates.cert),
                           "--ssl-keyfile", str(certificates.key),
                           ca_bundle=certificates.ca) as url:
        yield url


@pytest.fixture(autouse=True)
def no_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test says which CAs its commands trust; none comes from the outer environment."""
    monkeypatch.delenv("OSTINATO_CA_BUNDLE", raising=False)


def test_the_cli_lists_work_queues_over_https_trusting_the_ca_bundle(
        https_url: str, certificates: Certificates) -> None:
    result = cli(https_url, "work-queue", "ls", "--json",
                 env={"OSTINATO_CA_BUNDLE": str(certificates.ca)})
    assert result.json() == []


def test_without_the_ca_bundle_the_cli_says_to_set_it(https_url: str) -> None:
    result = cli(https_url, "work-queue", "ls")
    assert_user_error(result, "certificate", "OSTINATO_CA_BUNDLE")


def test_plain_http_to_the_https_port_fails(https_url: str, certificates: Certificates) -> None:
    result = cli(https_url.replace("https://", "http://"), "work-queue", "ls",
                 env={"OSTINATO_CA_BUNDLE": str(certificates.ca)})
    assert_user_error(result, "cannot reach")


def test_an_unreadable_ca_bundle_is_one_line(https_url: str, tmp_path: Path) -> None:
    result = cli(https_url, "work-queue", "ls", env={"OSTINATO_CA_BUNDLE": str(tmp_path / "no")})
    assert_user_error(result, "CA bundle", "OSTINATO_CA_BUNDLE")


@pytest.mark.parametrize("case", ["certfile only", "keyfile only, by variable", "missing key"])
def test_tls_half_configured_or_unreadable_is_one_line_before_serving(
        case: str, certificates: Certificates, tmp_path: Path) -> None:
    flags = {
        "certfile only": (["--ssl-certfile", str(certificates.cert)], {}, "--ssl-keyfile"),
        "keyfile only, by variable": ([], {"OSTINATO_SSL_KEYFILE": str(certificates.key)},
                                      "--ssl-certfile"),
        "missing key": (["--ssl-certfile", str(certificates.cert),
                         "--ssl-keyfile", str(tmp_path / "none.key")], {}, "none.key"),
    }
    args, env, named = flags[case]
    result = cli("http://unused", "server", "start", "--port", str(free_port()), *args,
                 env={"OSTINATO_HOME": str(tmp_path), **env})
    assert_user_error(result, named)


def test_an_agent_claims_and_runs_a_run_over_https(https_url: str, certificates: Certificates,
                                                   tmp_path: Path) -> None:
    trusting = {"OSTINATO_CA_BUNDLE": str(certificates.ca), "OSTINATO_HOME": str(tmp_path)}
    assert cli(https_url, "work-queue", "create", "default", env=trusting).code == 0
    assert cli(https_url, "deployment", "create", str(EXAMPLE), env=trusting).code == 0
    run_id = cli(https_url, "deployment", "run", "hello/every-minute", env=trusting).stdout.strip()
    agent = cli(https_url, "agent", "start", "-q", "default", "--once",
                "--ca-bundle", str(certificates.ca), env={"OSTINATO_HOME": str(tmp_path)})
    assert agent.code == 0, agent.stderr
    verify = ssl.create_default_context(cafile=certificates.ca)
    run = httpx.get(f"{https_url}/flow-runs/{run_id}", verify=verify, timeout=10).json()
    assert run["state"] == "COMPLETED", run
