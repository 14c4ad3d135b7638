"""The watch of one root, in a child process of :class:`overlaystore.watch.Watcher`.

Why a process: ``RustNotify``'s constructor adds one inotify watch per
directory while holding the GIL (~3 s for 100,000 packages), which would
freeze the server's event loop and every thread with it, at start-up and on
every restart of the watch.

Protocol, one JSON line per message on stdout, flushed:

* ``[]`` first, as soon as the watch exists (the parent's readiness signal);
* ``[[change, path], …]`` per debounced batch, ``change`` a
  :class:`watchfiles.Change` value; ``[]`` whenever ``--timeout`` passes
  without changes (the parent re-checks the root's identity then);
* ``{"error": "…"}`` last, if the watch failed (exit status 1).

The child ends when its stdin reaches EOF, so a parent that dies, however it
dies, never leaves it behind. SIGINT and SIGTERM are ignored: a terminal's
Ctrl-C, and a service manager's stop (systemd signals the whole control
group), reach the child as well as the server, and it is the parent that
decides when to stop. Otherwise the child would die first, and the server
would log a failed watch and restart it while shutting down.

Run as a script (``python -P …/watch_child.py``), it imports nothing of
overlaystore, whose import alone would double its memory and start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

# The documented Rust backend behind ``watchfiles.watch``: used directly,
# because ``watch`` gives no sign between the watch being established and its
# first batch, which may be a whole timeout later.
from watchfiles._rust_notify import RustNotify


def _stop_at_eof(stop: threading.Event) -> None:
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


def _send(out: BinaryIO, message: object) -> None:
    out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    out.flush()


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="watch_child", description="Watch one root; JSON lines on stdout.")
    parser.add_argument("root")
    parser.add_argument("--debounce", type=int, required=True, metavar="MS")
    parser.add_argument("--step", type=int, required=True, metavar="MS")
    parser.add_argument("--timeout", type=int, required=True, metavar="MS")
    parser.add_argument("--polling", action="store_true")
    parser.add_argument("--poll-delay", type=int, default=300, metavar="MS")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.SIG_IGN)
    stop = threading.Event()
    threading.Thread(target=_stop_at_eof, args=(stop,), name="stdin", daemon=True).start()
    out = sys.stdout.buffer
    try:
        # Positional: debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied.
        with RustNotify([args.root], False, args.polling, args.poll_delay, True, True) as notify:
            _send(out, [])
            while True:
                raw = notify.watch(args.debounce, args.step, args.timeout, stop)
                if raw == "stop" or raw == "signal":
                    return 0
                _send(out, [] if raw == "timeout" else list(raw))
    except BrokenPipeError:
        _discard_stdout()
        return 0  # the parent is gone
    except Exception as exc:
        try:
            _send(out, {"error": f"{type(exc).__name__}: {exc}"})
        except BrokenPipeError:
            _discard_stdout()
        return 1


def _discard_stdout() -> None:
    # Otherwise the interpreter's final flush of the unsent line fails again,
    # noisily, on its way out.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
