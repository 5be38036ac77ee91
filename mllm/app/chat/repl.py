"""The ``mllm chat`` loop: read lines, run ``/commands``, stream answers.

    run_interactive(chat, sys.stdin, sys.stdout, sys.stderr)   # /image PATH, /reset, /help, /exit
"""
from __future__ import annotations

import os
import sys
from typing import Any, List, Optional, TextIO

from transformers import TextStreamer

from .prompt import ChatError
from .session import ChatSession


class StreamPrinter(TextStreamer):
    """A ``TextStreamer`` that writes the answer to ``out`` as it is generated, without its leading
    whitespace (the answer ``ask`` returns is stripped too), and ends it with a newline."""

    def __init__(self, tokenizer: Any, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out
        self.chunks: List[str] = []  # each piece written, in order

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.chunks:
            text = text.lstrip()
        if text:
            self.chunks.append(text)
            self.out.write(text)
        if stream_end:
            self.out.write("\n")
        self.out.flush()


HELP = """commands:
  /image PATH   attach an image to your next message (repeat for several)
  /reset        forget the conversation (turns and images)
  /help         this list
  /exit         quit (so does end of input, Ctrl-D)
any other line is sent as your message."""


def run_interactive(session: ChatSession, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
                    stderr: Optional[TextIO] = None, stream: bool = True) -> int:
    """Read lines from ``stdin`` until ``/exit`` or EOF; answers go to ``stdout`` (streamed), everything
    else (prompts, notices, errors) to ``stderr``. No error ends the loop. Returns 0."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    tty = hasattr(stdin, "isatty") and stdin.isatty()

    def note(msg: str) -> None:
        stderr.write(msg + "\n")
        stderr.flush()

    note(f"chatting with {session.backend.source} ({session.backend.kind}); /help lists the commands")
    while True:
        if tty:
            stderr.write("user> ")
            stderr.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if _command(session, line, note):
                break
            continue
        printer = StreamPrinter(session.backend.tokenizer, stdout) if stream else None
        try:
            if tty:
                stderr.write("assistant> ")
                stderr.flush()
            answer = session.ask(line, streamer=printer)
            if printer is None:
                stdout.write(answer + "\n")
                stdout.flush()
        except KeyboardInterrupt:
            _end_line(printer, stdout)
            note("interrupted; that turn was dropped")
        except ChatError as e:
            note(f"error: {e}")
        except Exception as e:  # a failure in one turn (e.g. out of memory) must not end the session
            if os.environ.get("MLLM_DEBUG"):
                raise
            _end_line(printer, stdout)
            note(f"error: {type(e).__name__}: {e}")
    return 0


def _end_line(printer: Optional[StreamPrinter], out: TextIO) -> None:
    if printer is not None and printer.chunks:
        out.write("\n")
        out.flush()


def _command(session: ChatSession, line: str, note) -> bool:
    """Run one /command; True when the loop should end."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return True
    if name == "/help":
        note(HELP)
    elif name == "/reset":
        session.reset()
        note("conversation cleared")
    elif name == "/image":
        if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
            arg = arg[1:-1]
        if not arg:
            note("error: /image needs a path: /image PATH")
            return False
        try:
            image = session.attach_image(arg)
            note(f"attached {arg} ({session.backend.describe_image(image)}); "
                 f"{len(session.pending)} image(s) go with your next message")
        except ChatError as e:
            note(f"error: {e}")
    else:
        note(f"error: unknown command {name}; /help lists the commands")
    return False
