"""ToolRegistry behaviour, the default registry, and the plug-in interface (against a real local HTTP server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import pytest
from pydantic import Field

import tools
from tools import (
    PluginUnavailable,
    ToolArgumentError,
    ToolError,
    ToolPlugin,
    ToolRegistry,
    UnknownToolError,
    default_registry,
    tool,
)
from tools.plugins.weather import WeatherPlugin

BUILTINS = ["calculator", "unit_convert", "current_time", "date_add", "date_diff", "text_stats", "search_docs"]


def test_default_registry_has_every_builtin_and_no_plugin() -> None:
    registry = default_registry()
    assert registry.names() == BUILTINS
    assert len(registry) == len(BUILTINS) and "weather" not in registry
    for schema in registry.schemas():
        assert schema["type"] == "function"
        function = schema["function"]
        assert function["description"] and function["parameters"]["type"] == "object"
        assert function["parameters"]["additionalProperties"] is False
        json.dumps(schema)


def test_default_registry_is_fresh_each_time() -> None:
    first = default_registry()
    first.unregister("calculator")
    assert "calculator" in default_registry()


def test_registry_call_and_errors() -> None:
    registry = default_registry()
    assert registry.call("calculator", {"expression": "2 + 2"}) == "4"
    assert registry.call("calculator", '{"expression": "2 * 21"}') == "42"
    with pytest.raises(UnknownToolError, match=r"unknown tool 'rm_rf'; available tools: calculator"):
        registry.call("rm_rf", {})
    with pytest.raises(ToolError):  # UnknownToolError is a ToolError
        registry.get("__import__('os')")
    with pytest.raises(ToolError):
        registry.get(["calculator"])  # type: ignore[arg-type]
    with pytest.raises(ToolArgumentError):
        registry.call("calculator", {"expr": "1"})


def test_schemas_selection_and_subset() -> None:
    registry = default_registry()
    selected = registry.schemas(["unit_convert", "calculator"])
    assert [s["function"]["name"] for s in selected] == ["unit_convert", "calculator"]
    with pytest.raises(UnknownToolError):
        registry.schemas(["calculator", "nope"])
    small = registry.subset(["calculator"])
    assert small.names() == ["calculator"] and "calculator" in registry


def test_register_duplicates_and_replace() -> None:
    @tool(name="calculator", description="A fake calculator.")
    def fake(expression: str) -> str:
        return "0"

    registry = default_registry()
    with pytest.raises(ToolError, match="already registered"):
        registry.register(fake)
    registry.register(fake, replace=True)
    assert registry.call("calculator", {"expression": "1+1"}) == "0"
    with pytest.raises(TypeError):
        registry.register(lambda: None)  # type: ignore[arg-type]
    registry.unregister("calculator")
    with pytest.raises(UnknownToolError):
        registry.unregister("calculator")


def test_package_exports() -> None:
    assert set(tools.__all__) >= {"Tool", "ToolError", "ToolRegistry", "default_registry", "tool", "ToolPlugin"}


# ---- plug-ins ----


class _Echo(ToolPlugin):
    name = "echo"
    description = "Echo a word (a plug-in without network, for the interface test)."

    def __call__(self, word: Annotated[str, Field(description="The word")]) -> str:
        return word


def test_plugin_interface() -> None:
    plugin = _Echo()
    assert plugin.schema["function"]["parameters"]["required"] == ["word"]
    registry = ToolRegistry([plugin])
    assert registry.call("echo", {"word": "hi"}) == "hi"
    with pytest.raises(ToolArgumentError):
        registry.call("echo", {"word": 1})


class _Handler(BaseHTTPRequestHandler):
    body: bytes = b""
    status: int = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return


@pytest.fixture
def weather_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # bound (listening) before the thread starts
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/forecast", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_weather_plugin_reports_what_the_service_says(weather_server: tuple[str, type[_Handler]]) -> None:
    url, handler = weather_server
    handler.body = json.dumps(
        {"current_weather": {"temperature": 21.5, "windspeed": 7.2, "weathercode": 3, "time": "2024-06-01T12:00"}}
    ).encode()
    registry = default_registry()
    registry.register(WeatherPlugin(base_url=url, timeout_s=5))
    result = json.loads(registry.call("weather", {"latitude": 48.85, "longitude": 2.35}))
    assert result["temperature_c"] == 21.5 and result["conditions"] == "overcast"
    assert result["time"] == "2024-06-01T12:00" and result["source"] == "open-meteo.com"


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"not json"), (200, b'{"error": true}'), (200, b'{"current_weather": {"temperature": "hot"}}'), (500, b"")],
)
def test_weather_plugin_never_invents_data(
    weather_server: tuple[str, type[_Handler]], status: int, body: bytes
) -> None:
    url, handler = weather_server
    handler.status, handler.body = status, body
    with pytest.raises(PluginUnavailable):
        WeatherPlugin(base_url=url, timeout_s=5).as_tool().call({"latitude": 0, "longitude": 0})


def test_weather_plugin_unreachable_and_bad_arguments() -> None:
    plugin = WeatherPlugin(base_url="http://127.0.0.1:9/", timeout_s=2).as_tool()  # port 9: nothing listens
    with pytest.raises(PluginUnavailable, match="unavailable"):
        plugin.call({"latitude": 0, "longitude": 0})
    with pytest.raises(ToolArgumentError, match="latitude"):
        plugin.call({"latitude": 91, "longitude": 0})
    with pytest.raises(ToolArgumentError):
        plugin.call({"latitude": "Paris", "longitude": 0})
    with pytest.raises(PluginUnavailable, match="non-HTTP"):
        WeatherPlugin(base_url="file:///etc/passwd").as_tool().call({"latitude": 0, "longitude": 0})
