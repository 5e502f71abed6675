"""MiniGPT training package."""
