"""The files around the code: compose.yaml, the README's two commands, .ci/run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_yaml_with_the_three_services() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"postgres", "nats", "turnstream"}
    assert "-js" in services["nats"]["command"]
    env = services["turnstream"]["environment"]
    assert env["TURNSTREAM_DATABASE_URL"].startswith("postgresql://")
    assert env["TURNSTREAM_NATS_URL"].startswith("nats://")
    assert services["turnstream"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None
    assert text.index(block.group(0)) < 40, "the README opens with the two commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_opens_with_exactly_two_commands_serve_and_test() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("turnstream serve")
    assert "pytest" in commands[1]


def test_ci_runs_the_readmes_test_command_unchanged() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
