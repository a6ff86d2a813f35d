"""`linkvault api --workers N`: N processes serving one listening socket.

The parent binds the socket and checks the configuration once (a bad setting is one line
before anything starts; an embedded first start creates its key files once), then starts N
children that inherit the socket, each with its own runtime and connection pool; the kernel
hands each new connection to one of them. A child that exits while nothing asked it to is
replaced, after a pause that grows while replacements keep dying young.

SIGTERM or SIGINT: the parent closes its copy of the socket and sends SIGTERM to every child;
each stops accepting and drains as a single process does (LINKVAULT_SHUTDOWN_GRACE_SECONDS),
and the parent exits 0 once every child exited 0, killing any that outlive the grace plus a
margin. Each child also holds the read end of a pipe whose only writer is the parent: if the
parent dies, even by SIGKILL, the children see end-of-file, drain and exit, rather than
serve on unsupervised.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

__all__ = ["STOP_MARGIN_SECONDS", "Supervisor"]

# How long after the grace the parent waits for a child before killing it: the child's own
# cut (cancelling what outlived the grace) and the closing of its runtime.
STOP_MARGIN_SECONDS = 10.0
_FIRST_PAUSE = 0.5
_LONGEST_PAUSE = 10.0
_YOUNG = 5.0  # a child that dies younger than this makes the next pause longer


@dataclass
class _Slot:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = _FIRST_PAUSE
    restart_at: float | None = None


class Supervisor:
    """Runs `command` (given `--socket-fd FD --parent-fd FD` more) `count` times over `sock`."""

    def __init__(
        self,
        command: Sequence[str],
        sock: socket.socket,
        count: int,
        *,
        env: Mapping[str, str],
        grace: float,
        say: Callable[[str], None],
    ) -> None:
        self.command = list(command)
        self.sock = sock
        self.slots = [_Slot(n) for n in range(count)]
        self.env = dict(env)
        self.grace = grace
        self.say = say
        self._stopping = False
        self._parent_read = -1

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every child stopped cleanly, else 1."""
        read, write = os.pipe()  # not inheritable: only `read` is passed, to the children
        self._parent_read = read
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in self.slots:
                self._start(slot)
            while not self._stopping:
                self._tend()
                time.sleep(0.1)
            return self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(write)
            os.close(read)
            self._stop_quietly()

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: _Slot) -> None:
        fds = (self.sock.fileno(), self._parent_read)
        argv = [*self.command, "--socket-fd", str(fds[0]), "--parent-fd", str(fds[1])]
        slot.process = subprocess.Popen(argv, env=self.env, pass_fds=fds)  # noqa: S603 - our CLI
        slot.started = time.monotonic()
        slot.restart_at = None

    def _tend(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is not None:
                code = slot.process.poll()
                if code is None:
                    continue
                lived = now - slot.started
                slot.pause = min(slot.pause * 2, _LONGEST_PAUSE) if lived < _YOUNG else _FIRST_PAUSE
                self.say(
                    f"linkvault api: process {slot.process.pid} exited ({_how(code)}); "
                    f"starting another in {slot.pause:g} s"
                )
                slot.process = None
                slot.restart_at = now + slot.pause
            elif slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                self._start(slot)

    def _stop(self) -> int:
        # New connections are refused once no process holds the socket any more.
        self.sock.close()
        running = [s.process for s in self.slots if s.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + STOP_MARGIN_SECONDS
        clean = True
        for process in running:
            try:
                code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"linkvault api: process {process.pid} outlived the grace; killed")
                process.kill()
                code = process.wait()
            clean = clean and code == 0
        return 0 if clean else 1

    def _stop_quietly(self) -> None:
        """On an unexpected exit of the parent itself: no child is left behind."""
        for slot in self.slots:
            process = slot.process
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
