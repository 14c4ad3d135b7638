"""A pre-imported launcher of server processes, for crash loops.

``python -m server serve`` spends ~0.7 s importing before it listens; a crash
loop of hundreds of iterations cannot pay that each time. This process imports
the server once, then forks a child per request that runs exactly what
``python -m server serve ARGS`` runs (``server.__main__.main(ARGS)``), with its
own environment and log file. The child is an ordinary OS process with its own
pid: the tests SIGKILL it directly and ask the launcher to reap it.

Protocol (one JSON object per line on stdin, one answer per line on stdout)::

    {"op": "spawn", "argv": [...], "env": {...}, "cwd": "...", "log": "..."}  -> {"pid": N}
    {"op": "reap", "pid": N}                                                   -> {"status": S}

The launcher never starts a thread or an event loop, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import sys

import server.__main__ as cli
import server.app  # noqa: F401 - imported now so that children start fast


def _spawn(request: dict[str, object]) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: become `overlaystore serve`.
    try:
        os.chdir(str(request["cwd"]))
        fd = os.open(str(request["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        code = cli.main([str(a) for a in request["argv"]])  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001 - the child must never return into the launcher loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code or 0)


def main() -> None:
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            answer: dict[str, object] = {"pid": _spawn(request)}
        elif request["op"] == "reap":
            _, status = os.waitpid(int(request["pid"]), 0)
            answer = {"status": status}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
