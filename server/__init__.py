"""MiniGPT server package."""
