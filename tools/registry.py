"""`ToolRegistry`: the set of tools offered to a model, looked up by name.

The server uses it to describe tools and the CLI agent loop uses it to run the calls a model makes. A registry
holds `Tool`s; internet plug-ins (`tools.plugins.ToolPlugin`) are turned into `Tool`s when registered.
`default_registry()` holds the built-ins only: plug-ins are never registered by default.

It is not a tool-call parser and does not decide which tools a request may use (that is `tool_choice` in the
server).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from tools.base import Tool, ToolError, UnknownToolError
from tools.builtin import builtin_tools
from tools.plugins import ToolPlugin

logger = logging.getLogger(__name__)


class ToolRegistry:
    """An ordered name -> Tool mapping with schema export and validated calls."""

    def __init__(self, tools: Iterable[Tool | ToolPlugin] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    def register(self, item: Tool | ToolPlugin, *, replace: bool = False) -> Tool:
        """Add a tool (or a plug-in, wrapped as a Tool). A second tool of the same name is an error unless
        `replace=True`."""
        if isinstance(item, Tool):
            new = item
        elif isinstance(item, ToolPlugin):
            new = item.as_tool()
        else:
            raise TypeError(f"expected a Tool or a ToolPlugin, got {type(item).__name__}")
        if new.name in self._tools and not replace:
            raise ToolError(f"a tool named {new.name!r} is already registered")
        self._tools[new.name] = new
        return new

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._tools[name]

    def get(self, name: str) -> Tool:
        """The tool of that name; `UnknownToolError` (a ToolError) names the available ones otherwise."""
        found = self._tools.get(name) if isinstance(name, str) else None
        if found is None:
            available = ", ".join(self._tools) or "none"
            raise UnknownToolError(f"unknown tool {str(name)[:80]!r}; available tools: {available}")
        return found

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI `tools` entries for the named tools (all of them when `names` is None), in the given order."""
        selected = self._tools.values() if names is None else [self.get(n) for n in names]
        return [tool.openai_schema() for tool in selected]

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A new registry with only the named tools (e.g. from `--tools calculator,unit_convert`)."""
        return ToolRegistry(self.get(name) for name in names)

    def call(self, name: str, arguments: dict[str, Any] | str | None = None) -> str:
        """Run a tool by name with JSON-string or dict arguments; raises only ToolError."""
        tool = self.get(name)
        logger.debug("calling tool %s", name)
        return tool.call(arguments)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()!r})"


def default_registry() -> ToolRegistry:
    """A fresh registry with every built-in tool (and no plug-ins)."""
    return ToolRegistry(builtin_tools())
