# TEMPORARY local stand-in until the MCP client lands; never committed.
from typing import Any


class McpTools:
    def __init__(self, servers: Any, settings: Any) -> None: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    def tools_for(self, ids: Any) -> list[Any]:
        return []

    async def call(self, server: str, name: str, arguments: Any) -> Any:
        raise NotImplementedError
