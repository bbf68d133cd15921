"""The files around the code: compose.yaml, the README's two commands, .ci/run."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose_services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    return services


def flag(command: list[str], *names: str) -> str | None:
    """The value after the first of ``names`` in a server's command line (None if absent)."""
    for i, arg in enumerate(command):
        if arg in names:
            return command[i + 1]
    return None


def test_compose_runs_three_nats_nodes_as_one_jetstream_cluster() -> None:
    services = compose_services()
    nodes = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    assert len(nodes) == 3
    names, clusters, volumes = set(), set(), set()
    for name, node in nodes.items():
        command = node["command"]
        assert {"-js", "--jetstream"} & set(command), f"{name}: JetStream is off"
        names.add(flag(command, "-n", "--name", "--server_name"))
        clusters.add(flag(command, "--cluster_name"))
        assert flag(command, "--cluster") == "nats://0.0.0.0:6222"
        routes = flag(command, "--routes")
        assert routes is not None, f"{name} has no routes"
        routed = {urlsplit(r).hostname for r in routes.split(",")}
        assert routed == set(nodes) - {name}, f"{name} routes to {routed}"
        assert flag(command, "-m", "--http_port") == "8222"
        store_dir = flag(command, "-sd", "--store_dir")
        (volume,) = node["volumes"]
        volume_name, mount = volume.split(":")
        assert mount == store_dir
        volumes.add(volume_name)
        test = node["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert "8222/healthz" in test[-1]
        # The scratch-based tags have no wget for the healthcheck.
        assert node["image"].endswith("-alpine")
    assert names == set(nodes), "each node is named after its service"
    assert None not in clusters
    assert len(clusters) == 1, "one cluster name"
    assert len(volumes) == 3, "each node keeps its data in its own volume"


def test_compose_runs_two_service_replicas_on_the_same_store_and_cluster() -> None:
    services = compose_services()
    nodes = {n for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    replicas = {n: s for n, s in services.items() if "build" in s}
    assert len(replicas) == 2
    database_urls, host_ports = set(), set()
    for name, replica in replicas.items():
        env = replica["environment"]
        database = urlsplit(env["TURNSTREAM_DATABASE_URL"])
        assert database.scheme == "postgresql"
        assert database.hostname in services
        database_urls.add(env["TURNSTREAM_DATABASE_URL"])
        servers = [urlsplit(url) for url in env["TURNSTREAM_NATS_URL"].split(",")]
        assert {s.scheme for s in servers} == {"nats"}
        assert {s.hostname for s in servers} == nodes, f"{name} misses a NATS node"
        assert {s.port for s in servers} == {4222}
        assert env["TURNSTREAM_NATS_REPLICAS"] == str(len(nodes))
        assert env["TURNSTREAM_JWT_SECRET"].startswith("${TURNSTREAM_JWT_SECRET:?")
        assert replica["depends_on"][database.hostname]["condition"] == "service_healthy"
        assert nodes <= set(replica["depends_on"])
        (port,) = replica["ports"]
        host_port, container_port = port.split(":")
        assert container_port == env["TURNSTREAM_PORT"]
        host_ports.add(host_port)
    assert len(database_urls) == 1, "both replicas share one database"
    assert len(host_ports) == 2, "each replica has its own host port"


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


def test_the_readme_documents_every_setting() -> None:
    from turnstream.settings import ENV_PREFIX, known_names

    text = (ROOT / "README.md").read_text()
    missing = [
        ENV_PREFIX + name
        for name in sorted(known_names())
        if f"| `{ENV_PREFIX}{name}` |" not in text
    ]
    assert len(known_names()) > 40  # every group's variables are seen
    assert missing == [], "add these to the README's settings table"
