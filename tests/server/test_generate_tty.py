"""`minigpt-generate` chat on a real terminal (a pseudo-terminal): line editing and arrow-key history.

Not a test of the answers (see test_cli.py): only that a chat line typed at a terminal goes through readline.
"""

from __future__ import annotations

import importlib.util
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal"),
    pytest.mark.skipif(importlib.util.find_spec("readline") is None, reason="this Python was built without readline"),
]

UP = "\x1b[A"
LEFT = "\x1b[D"


class Terminal:
    """The master side of a pty with a child process on the slave side; reads wait on select, never sleep."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self.seen = ""

    def type(self, text: str) -> int:
        """Send keys; returns where the output after them starts."""
        mark = len(self.seen)
        os.write(self.master, text.encode())
        return mark

    def wait_for(self, needle: str, since: int = 0, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while needle not in self.seen[since:]:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"{needle!r} not seen; output after the keys: {self.seen[since:]!r}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {needle!r}; output: {self.seen[since:]!r}")
            self.seen += chunk.decode("utf-8", "replace")
        return self.seen[since:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def test_chat_lines_have_editing_and_history(tiny_checkpoint: Path) -> None:
    argv = [sys.executable, "-m", "server.generate_cli", "--model", str(tiny_checkpoint)]
    term = Terminal([*argv, "--max-length", "2", "--temperature", "0", "--threads", "1"])
    try:
        term.wait_for("> ")
        answered = term.type("helo" + LEFT + "l\r")  # cursor left, insert: "hello"
        term.wait_for("> ", answered)
        recalled = term.type(UP)  # readline redraws the previous line after the prompt
        assert "hello" in term.wait_for("hello", recalled)
        assert "^[[A" not in term.seen[recalled:]  # a plain tty would only echo the escape sequence
        term.type("\x15exit\r")  # Ctrl-U clears the recalled line, then quit
        assert term.proc.wait(30) == 0
    finally:
        term.close()
