"""The core exception tree. Callers map these to HTTP statuses or CLI exit codes in one place each."""


class MiniGPTError(Exception):
    """Base of every error MiniGPT raises on purpose."""


class ConfigError(MiniGPTError, ValueError):
    """A model or run configuration is invalid."""


class CheckpointError(MiniGPTError):
    """A checkpoint directory is missing a file, or a file in it is corrupt."""


class TokenizerError(MiniGPTError):
    """The tokenizer file is missing or does not carry the fixed special tokens."""


class InvalidRequest(MiniGPTError, ValueError):
    """A generation request is malformed (bad sampling values, bad messages, ...)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    """Prompt plus requested completion do not fit into the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_new_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_new_tokens} in the completion). Please reduce the length of the messages or completion.",
            param="messages",
        )
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.max_model_len = max_model_len


class GrammarError(MiniGPTError):
    """The grammar engine rejected a token the mask allowed, or failed internally."""


class EngineOverloaded(MiniGPTError):
    """The waiting queue is full; the caller should retry later."""


class EngineClosed(MiniGPTError):
    """The engine has been shut down."""
