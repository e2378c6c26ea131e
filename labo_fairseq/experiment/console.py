"""How the pipeline speaks: its console lines, a live status line on a terminal, and durations."""
import os
import shutil
import sys
import threading
from typing import Optional, TextIO


class Console:
    """The pipeline's console output. On a terminal one status line stays at the bottom and is
    rewritten in place (`status`); every other line is printed above it. Elsewhere (a log file, a
    pipe) there is no status line: `live` is False and the pipeline prints plain lines instead."""

    def __init__(self, stream: Optional[TextIO] = None):
        self._stream = stream
        self._status = ""
        self._lock = threading.RLock()  # lines come from several threads (runs, the progress reporter)

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # looked up each time: tests and callers may swap sys.stdout

    @property
    def live(self) -> bool:
        try:
            return self.stream.isatty() and os.environ.get("TERM") != "dumb"
        except (AttributeError, ValueError):
            return False

    def write(self, text: str) -> None:
        """Prints `text` (whole lines) above the status line."""
        with self._lock:
            self._erase()
            self.stream.write(text)
            self._draw()
            self.stream.flush()

    def say(self, message: str) -> None:
        self.write(f"[experiment] {message}\n")

    def status(self, text: str) -> None:
        """Shows `text` as the status line (on a terminal; elsewhere it is dropped)."""
        if not self.live:
            return
        with self._lock:
            self._erase()
            self._status = text
            self._draw()
            self.stream.flush()

    def clear_status(self) -> None:
        with self._lock:
            self._erase()
            self._status = ""
            self.stream.flush()

    def _erase(self) -> None:
        if self._status:
            self.stream.write("\r\x1b[K")

    def _draw(self) -> None:
        if self._status:
            # one screen line at most: a wrapped status line could not be erased with \r
            width = shutil.get_terminal_size((100, 24)).columns - 1
            text = self._status if len(self._status) <= width else self._status[:max(0, width - 1)] + "…"
            self.stream.write(text)


CONSOLE = Console()


def say(message: str) -> None:
    CONSOLE.say(message)


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
