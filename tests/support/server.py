"""A real `turnstream serve` process for end-to-end tests, and a small SSE reader."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from turnstream.http.auth import SECRET_FILE, mint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Frame:
    id: int | None
    event: str
    data: dict[str, Any]
    """The frame's data without ``p``: the same in every stream and every resume."""
    raw: str = ""
    padding: str | None = None
    """``p``, the random filler of token and reasoning frames (None without)."""


def parse_sse(lines: Iterator[str]) -> Iterator[Frame | str]:
    """Frames from an SSE body; a comment line comes out as its text (e.g. ': ping')."""
    fields: dict[str, str] = {}
    raw: list[str] = []
    for line in lines:
        if line == "":
            if fields:
                data = json.loads(fields.get("data", "null"))
                padding = data.pop("p", None) if isinstance(data, dict) else None
                yield Frame(
                    id=int(fields["id"]) if "id" in fields else None,
                    event=fields.get("event", "message"),
                    data=data,
                    raw="\n".join(raw),
                    padding=padding,
                )
            fields, raw = {}, []
            continue
        if line.startswith(":"):
            yield line
            continue
        raw.append(line)
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


@dataclass
class Server:
    """One `turnstream serve` process; restartable on the same database schema."""

    database_url: str | None
    """None: serve starts its embedded PostgreSQL in the data folder."""
    schema: str
    data_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    secret: str | None = field(default_factory=lambda: secrets.token_urlsafe(32))
    """None: serve creates its dev secret in the data folder."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, tenant: str = "acme", user: str = "alice", **kw: Any) -> str:
        secret = self.secret or (self.data_dir / SECRET_FILE).read_text().strip()
        return mint(secret, tenant=tenant, user=user, **kw)

    def headers(self, tenant: str = "acme", user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, user)}"}

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        env = (
            {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")}
            | {
                "TURNSTREAM_DATABASE_SCHEMA": self.schema,
                "TURNSTREAM_DATA_DIR": str(self.data_dir),
                "TURNSTREAM_PORT": str(self.port),
                "TURNSTREAM_RUNNER_CHECK_INTERVAL_S": "0.5",
                "TURNSTREAM_LOG_LEVEL": "WARNING",
            }
            | self.env_extra
        )
        if self.database_url is not None:
            env["TURNSTREAM_DATABASE_URL"] = self.database_url
        if self.secret is not None:
            env["TURNSTREAM_JWT_SECRET"] = self.secret
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"serve-{self.port}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "turnstream", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """kill -9: no shutdown hook runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
