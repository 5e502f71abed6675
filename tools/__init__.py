"""MiniGPT tools package."""
