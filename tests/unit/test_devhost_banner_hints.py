# intent_ref: platform.devhost
"""The devhost's banner hints are commands that work as printed: run on another port and data folder, they name
both, so the token they mint is one that devhost accepts and the key they print is its key; `devhost token` takes
its default port from QP_DEVHOST_PORT, as `devhost run` does."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import jwt
import pytest

from devhost import cli
from devhost.child import PROJECT_ROOT
from devhost.host import HostOptions
from devhost.identity import (
    DEFAULT_AUDIENCE,
    SigningKey,
    dev_tenant_id,
    issuer_for,
    key_directory,
    openid_configuration,
    openid_metadata_url,
)
from devhost.keys import load_or_create_master_key
from shared.auth.tokens import TokenValidator

PORT = 7399


def _banner(port: int, data_dir: str) -> list[str]:
    args = argparse.Namespace(app=".", host="127.0.0.1", port=port, data_dir=data_dir, seed_demo=True)
    options = HostOptions(app_dir=PROJECT_ROOT, host="127.0.0.1", port=port, data_dir=Path(data_dir), seed_demo=True)
    return cli._banner(args, options)


def _hints(lines: list[str]) -> tuple[str, str]:
    """The banner's token command and its master key command, as a person would copy them."""
    token = next(line.split("other tokens: ", 1)[1] for line in lines if "other tokens: " in line)
    key = next(m.group(1) for line in lines if (m := re.search(r"x-functions-key: \$\((.*)\)\"$", line)))
    return token, key


def _run(command: str) -> str:
    """`command` in a shell of the project's folder with no QP_DEVHOST_PORT, as a second terminal would have it."""
    env = {name: value for name, value in os.environ.items() if name != "QP_DEVHOST_PORT"}
    done = subprocess.run(command, shell=True, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_hints_of_a_devhost_on_another_port_and_folder_work_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QP_DEVHOST_PORT", raising=False)
    data_dir = tmp_path / "dev data"  # a space: the printed command quotes it
    token_command, key_command = _hints(_banner(PORT, str(data_dir)))
    base_url = f"http://127.0.0.1:{PORT}"

    # What the devhost on PORT with data_dir accepts: its issuer, its signing key.
    signing_key = SigningKey.load_or_create(key_directory(data_dir))
    metadata_url = openid_metadata_url(base_url)
    validator = TokenValidator(
        metadata_url,
        [DEFAULT_AUDIENCE],
        fetch=lambda url: (
            openid_configuration(base_url, "organizations") if url == metadata_url else signing_key.jwks(base_url)
        ),
    )
    verified = validator.validate(_run(token_command))
    assert verified.roles == {"Intent.Reader"}
    assert verified.entra_tenant_id == dev_tenant_id("fabrikam")

    assert _run(key_command) == load_or_create_master_key(data_dir)


def test_hints_of_a_devhost_with_the_defaults_name_neither(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QP_DEVHOST_PORT", raising=False)
    monkeypatch.setattr("devhost.identity.mint_token_cli", lambda *args: "token")  # no key made in ./.data
    token_command, key_command = _hints(_banner(cli.DEFAULT_PORT, cli.DEFAULT_DATA_DIR))
    assert token_command == ".venv/bin/python -m devhost token --tenant fabrikam --roles Intent.Reader"
    assert key_command == ".venv/bin/python -m devhost key"


def test_a_token_names_the_port_of_qp_devhost_port_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QP_DEVHOST_PORT", str(PORT))
    assert cli.main(["token", "--tenant", "contoso", "--roles", "Intent.Reader", "--data-dir", str(tmp_path)]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["iss"] == issuer_for(f"http://127.0.0.1:{PORT}", claims["tid"])


def test_the_example_workers_devhost_tokens_are_for_the_devhost_it_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.workers import remote_worker

    monkeypatch.delenv("QP_DEVHOST_PORT", raising=False)
    monkeypatch.delenv("QP_TOKEN", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)
    data_dir = tmp_path / "worker data"
    base_url = f"http://127.0.0.1:{PORT}"
    options = remote_worker.parse_args(
        ["--api", base_url, "--devhost-tenant", "contoso", "--devhost-data-dir", str(data_dir)]
    )
    token = remote_worker.TokenSource(options).get()

    signing_key = SigningKey.load_or_create(key_directory(data_dir))
    metadata_url = openid_metadata_url(base_url)
    validator = TokenValidator(
        metadata_url,
        [DEFAULT_AUDIENCE],
        fetch=lambda url: (
            openid_configuration(base_url, "organizations") if url == metadata_url else signing_key.jwks(base_url)
        ),
    )
    verified = validator.validate(token)
    assert verified.roles == {"Module.Worker"} and verified.entra_tenant_id == dev_tenant_id("contoso")
