"""Worker pools for the commands that fan out over cases (conversion, evaluation): spawned workers that end with
their parent. A killed command must not leave workers converting or evaluating on for nobody."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def exit_with_parent() -> None:
    """In a pool worker: end when the parent process dies (killed, even with SIGKILL), instead of working on for
    nobody (Linux; elsewhere workers end when they next ask for work)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the line above
            os._exit(1)


def worker_pool(num_processes: int) -> ProcessPoolExecutor:
    """``num_processes`` spawned workers (no forked copy of torch's threads) that end with their parent."""
    return ProcessPoolExecutor(num_processes, mp_context=get_context("spawn"), initializer=exit_with_parent)
