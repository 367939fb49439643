"""errors.run_main(..., skip_teardown=True): a stage that imported torch exits
without Python's teardown of its modules (benchmarks/: 0.5-0.8 s a stage), yet
everything a normal exit does first still happens: thread pools left open are shut
down, non-daemon threads finish, atexit handlers run, buffered stdout and stderr
reach the pipe, the exit code is 0.
A failure still exits as before (one line, non-zero)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

STAGE = textwrap.dedent("""
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from gptpipe.errors import UserError, run_main

    out = Path(sys.argv[1])
    POOLS = []

    def late_writer():
        time.sleep(0.3)
        (out / "thread.txt").write_text("joined")

    def main():
        threading.Thread(target=late_writer).start()  # not a daemon: exit waits for it
        # a pool left open, as MLflow's artifact and async-logging pools are: its idle
        # worker is not a daemon either, and ends only when the exit shuts pools down
        POOLS.append(ThreadPoolExecutor(1))  # kept, as a cached MLflow store keeps its own
        POOLS[0].submit(time.sleep, 0.1).result()
        atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
        sys.stdout.write("last line, no newline, not flushed")
        sys.stderr.write("a warning, not flushed")
        if sys.argv[2] == "fail":
            raise UserError("bad param train.lr")

    run_main(main, "stage", skip_teardown=True)
""")


def _run(tmp_path: Path, how: str) -> subprocess.CompletedProcess:
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    return subprocess.run([sys.executable, str(script), str(tmp_path), how],
                          capture_output=True, text=True, timeout=60)


def test_a_success_keeps_output_threads_and_atexit(tmp_path):
    done = _run(tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "last line, no newline, not flushed"
    assert done.stderr == "a warning, not flushed"
    assert (tmp_path / "thread.txt").read_text() == "joined"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_a_failure_is_still_one_line_and_non_zero(tmp_path):
    done = _run(tmp_path, "fail")
    assert done.returncode == 2
    assert done.stderr.endswith("stage: error: bad param train.lr\n"), done.stderr
    assert (tmp_path / "thread.txt").read_text() == "joined"
