"""MiniGPT's OpenAI-compatible HTTP server (`minigpt-serve`) and in-process CLI client (`minigpt-generate`).

settings (pydantic-settings, MINIGPT_*) -> app (create_app, lifespan, gateway middleware) -> routes ->
chat (request -> ids + SamplingParams) -> generation (engine handles -> deltas) -> streaming (SSE / JSON);
errors maps every exception to OpenAI's envelope; metrics renders Prometheus text.
It holds no model code: the engine, template and output parser live in `minigpt_core`.
"""
