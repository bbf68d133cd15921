"""The models file's ``[[mcp_servers]]``: read, checked, and which calls need approval."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnstream.settings import ModelSettings
from turnstream.settings.base import SettingsError

MODEL = """
[[models]]
id = "local"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
mcp_servers = {servers}
"""


def models_file(tmp_path: Path, servers: str, used: str = '["files"]') -> ModelSettings:
    path = tmp_path / "models.toml"
    path.write_text(servers + MODEL.format(servers=used))
    return ModelSettings(file=path)


def test_servers_are_read_with_their_transport_and_approval_rule(tmp_path: Path) -> None:
    settings = models_file(
        tmp_path,
        """
[[mcp_servers]]
id = "files"
command = ["python", "-m", "my_server"]
approval = "always"

[[mcp_servers]]
id = "web"
url = "http://127.0.0.1:9/mcp"
approval = ["delete_page"]

[[mcp_servers]]
id = "calc"
command = ["calc-mcp"]
""",
        used='["files", "web"]',
    )
    servers = settings.mcp_servers()
    assert list(servers) == ["files", "web", "calc"]
    assert servers["files"].command == ("python", "-m", "my_server")
    assert servers["files"].needs_approval("anything")
    assert servers["web"].needs_approval("delete_page")
    assert not servers["web"].needs_approval("read_page")
    assert not servers["calc"].needs_approval("add")  # "never" by default
    assert settings.load()["local"].mcp_servers == ("files", "web")


@pytest.mark.parametrize(
    ("servers", "used", "reason"),
    [
        ('[[mcp_servers]]\nid = "files"\n', '["files"]', "either command"),
        (
            '[[mcp_servers]]\nid = "files"\ncommand = ["x"]\nurl = "http://h/mcp"\n',
            '["files"]',
            "either command",
        ),
        (
            '[[mcp_servers]]\nid = "files"\ncommand = ["x"]\n'
            '[[mcp_servers]]\nid = "files"\ncommand = ["y"]\n',
            '["files"]',
            "listed twice",
        ),
        ('[[mcp_servers]]\nid = "files"\ncommand = ["x"]\n', '["nope"]', "unknown MCP server"),
        (
            '[[mcp_servers]]\nid = "files"\ncommand = ["x"]\napproval = "sometimes"\n',
            '["files"]',
            "invalid",
        ),
    ],
)
def test_a_bad_server_entry_is_a_settings_error_that_says_why(
    tmp_path: Path, servers: str, used: str, reason: str
) -> None:
    with pytest.raises(SettingsError, match=reason):
        models_file(tmp_path, servers, used).load()
