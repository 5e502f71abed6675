"""MiniGPT core: model, tokenizer + chat template, checkpoint I/O and the generation engine.

Nothing here knows about HTTP, training loops or tools; those packages build on this one.
"""

__version__ = "0.1.0"
