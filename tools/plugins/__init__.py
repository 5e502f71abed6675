"""The plug-in interface for tools that need the outside world (web search, weather, email, calendar, ...).

MiniGPT ships no such tool enabled: they need network access, accounts or keys that a user must choose to
give, and a tool that cannot reach its service must fail loudly instead of inventing an answer. A plug-in is a
class with a `name`, a `description` and a typed `__call__`; the parameter schema is derived from the
`__call__` signature exactly as for `@tool` functions, so a plug-in validates its arguments like a built-in.

Writing one (see `tools.plugins.weather` for a complete example)::

    class WebSearch(ToolPlugin):
        name = "web_search"
        description = "Search the web and return the top results."

        def __init__(self, api_key: str) -> None:
            self.api_key = api_key

        def __call__(self, query: Annotated[str, Field(description="Search terms")]) -> list[dict[str, str]]:
            ...  # call the service; on any failure raise PluginUnavailable, never return made-up results

    registry = default_registry()
    registry.register(WebSearch(api_key=os.environ["MY_SEARCH_KEY"]))

Rules for plug-ins: raise `PluginUnavailable` (a `ToolError`) when the service cannot be reached or answers
garbage; put a timeout on every request; return what the service said, trimmed, not a paraphrase.
This module is not a plug-in loader: registering one is an explicit line of code by the user.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from tools.base import Tool, ToolError

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1_000_000


class PluginUnavailable(ToolError):
    """The plug-in's outside service could not be reached or gave an unusable answer."""


class ToolPlugin(ABC):
    """Base class of internet tool plug-ins: `name`, `description`, a typed `__call__`, and `schema`."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Do the work; the signature (typed keyword parameters) defines the tool's JSON schema."""

    def as_tool(self) -> Tool:
        """This plug-in as a validated `Tool` (what `ToolRegistry.register` stores)."""
        return Tool(name=self.name, description=self.description, fn=self.__call__)

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI `tools` entry for this plug-in."""
        return self.as_tool().openai_schema()


def fetch_json(url: str, params: dict[str, Any], timeout_s: float = 10.0) -> Any:
    """GET `url?params` and decode JSON; every failure becomes `PluginUnavailable` (no retries, no fallbacks)."""
    if not url.startswith(("https://", "http://")):
        raise PluginUnavailable(f"refusing a non-HTTP URL: {url[:80]!r}")
    full_url = f"{url}?{urllib.parse.urlencode(params)}" if params else url
    request = urllib.request.Request(full_url, headers={"User-Agent": "MiniGPT-tools/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        logger.info("plug-in request to %s failed: %s", url, exc)
        raise PluginUnavailable(f"service unavailable ({url}): {exc}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise PluginUnavailable("service answer too large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PluginUnavailable("service answered with something that is not JSON") from None


__all__ = ["PluginUnavailable", "ToolPlugin", "fetch_json"]
