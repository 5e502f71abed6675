"""MiniGPT tools: the `Tool` type, the `@tool` decorator, the registry, the built-ins and the plug-in base.

Imports only the standard library and pydantic (see STYLE.md), so that training and the server can both use it.
"""

from tools.base import (
    Tool,
    ToolArgumentError,
    ToolError,
    ToolExecutionError,
    UnknownToolError,
    parse_arguments,
    tool,
)
from tools.builtin import builtin_tools
from tools.plugins import PluginUnavailable, ToolPlugin
from tools.registry import ToolRegistry, default_registry

__all__ = [
    "PluginUnavailable",
    "Tool",
    "ToolArgumentError",
    "ToolError",
    "ToolExecutionError",
    "ToolPlugin",
    "ToolRegistry",
    "UnknownToolError",
    "builtin_tools",
    "default_registry",
    "parse_arguments",
    "tool",
]
