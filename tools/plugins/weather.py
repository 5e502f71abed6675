"""Example internet plug-in: current weather from the Open-Meteo API (https://open-meteo.com, no key needed).

Not registered by default. To offer it to the model::

    from tools.plugins.weather import WeatherPlugin
    registry = default_registry()
    registry.register(WeatherPlugin())

It reports what the service returned and nothing else: when the service cannot be reached, or its answer lacks
the expected fields, the call fails with `PluginUnavailable` instead of guessing. `base_url` can point at a
self-hosted Open-Meteo (or at a local test server).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from tools.plugins import PluginUnavailable, ToolPlugin, fetch_json

OPEN_METEO_URL = "https://api.open-meteo.com/v1/forecast"

# WMO weather interpretation codes, as documented by Open-Meteo (the common ones).
WMO_CODES: dict[int, str] = {
    0: "clear sky",
    1: "mainly clear",
    2: "partly cloudy",
    3: "overcast",
    45: "fog",
    48: "depositing rime fog",
    51: "light drizzle",
    53: "moderate drizzle",
    55: "dense drizzle",
    61: "slight rain",
    63: "moderate rain",
    65: "heavy rain",
    71: "slight snow fall",
    73: "moderate snow fall",
    75: "heavy snow fall",
    80: "slight rain showers",
    81: "moderate rain showers",
    82: "violent rain showers",
    95: "thunderstorm",
}


class WeatherPlugin(ToolPlugin):
    """Current weather at a latitude/longitude, from Open-Meteo."""

    name = "weather"
    description = "Current weather (temperature in C, wind speed in km/h, conditions) at a latitude and longitude."

    def __init__(self, base_url: str = OPEN_METEO_URL, timeout_s: float = 10.0) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s

    def __call__(
        self,
        latitude: Annotated[float, Field(description="Latitude in degrees", ge=-90, le=90)],
        longitude: Annotated[float, Field(description="Longitude in degrees", ge=-180, le=180)],
    ) -> dict[str, Any]:
        params = {"latitude": latitude, "longitude": longitude, "current_weather": "true"}
        data = fetch_json(self.base_url, params, self.timeout_s)
        current = data.get("current_weather") if isinstance(data, dict) else None
        if not isinstance(current, dict):
            raise PluginUnavailable("weather service answer has no 'current_weather' block")
        try:
            temperature = float(current["temperature"])
            wind = float(current["windspeed"])
            code = int(current["weathercode"])
        except (KeyError, TypeError, ValueError):
            raise PluginUnavailable("weather service answer is missing temperature, wind or weather code") from None
        return {
            "latitude": latitude,
            "longitude": longitude,
            "time": str(current.get("time", "")),
            "temperature_c": temperature,
            "wind_speed_kmh": wind,
            "conditions": WMO_CODES.get(code, f"WMO code {code}"),
            "source": "open-meteo.com",
        }
