"""The one-line user error, and the wrapper that turns failures into it.

A user who points gptpipe at a bad file or types a bad param gets one line on
stderr and a non-zero exit, never a traceback. Set GPTPIPE_DEBUG=1 (or pass
--debug to the CLI) to see the traceback as well.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix: bad input, bad params, missing files."""


class StopRequested(UserError):
    """SIGTERM or Ctrl-C during training: stopped at a step boundary, checkpoint kept."""


def debug_enabled() -> bool:
    return os.environ.get("GPTPIPE_DEBUG", "").lower() not in ("", "0", "false", "no")


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def run_main(main: Callable[[], object], prog: str, skip_teardown: bool = False) -> None:
    """Run a stage or command; map every failure to one line and an exit code.

    skip_teardown: after a success, exit once the atexit handlers ran and the
    standard streams are flushed, without Python's teardown of every module: for
    a process that imported torch, that teardown alone takes 0.5-0.8 s on a
    2-core machine, and the stages that import it run in every experiment. Only
    for a main() that closes what it writes and waits for what it starts."""
    try:
        main()
        if skip_teardown:
            _exit_without_teardown()
    except UserError as exc:
        _report(prog, str(exc))
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        _report(prog, "interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the last line of defence
        _report(prog, f"internal error: {type(exc).__name__}: {exc}"
                " (set GPTPIPE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_INTERNAL_ERROR)


def _exit_without_teardown() -> None:
    """Exit 0 after what CPython's exit does before its teardown, in its order: shut
    the thread pools down and wait for the non-daemon threads (threading._shutdown),
    run the atexit handlers, flush the standard streams. Where threading has no
    _shutdown (not CPython), return: the caller exits the normal way."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:
        return
    shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _report(prog: str, message: str) -> None:
    if debug_enabled():
        traceback.print_exc()
    sys.stderr.write(f"{prog}: error: {one_line(message)}\n")
    sys.stderr.flush()
