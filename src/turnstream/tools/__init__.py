"""Server tools: tools that run here, for the model, on the MCP servers of the models file.

Independent of the rest of turnstream (it knows the domain's tool specs, the settings
and the MCP SDK, nothing else): the composition root builds :class:`McpTools` from the
configured servers, and the turn runner asks it for a model's tools and calls them.
"""

from __future__ import annotations

from turnstream.tools.mcp import McpTools
from turnstream.tools.results import ToolOutcome

__all__ = ["McpTools", "ToolOutcome"]
