"""Running a `fast-anerf` command in its own process, to signal it at a chosen moment (Ctrl-C, kill)."""

import os
import re
import subprocess
import threading

ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the child does not compete with the test's threads


def run_until(cmd: list[str], pattern: str, timeout: float = 90) -> tuple[subprocess.Popen, list[str]]:
    """Start ``cmd``; return once a stdout line matches ``pattern`` (the process still running) and the lines
    so far."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD_ENV)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.search(pattern, line):
                return proc, lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"never printed {pattern!r}:\n{''.join(lines)}")
