"""Fault points for crash tests: SIGKILL this process at a named point (STEVORA_FAULT_POINT).

With STEVORA_FAULT_ONCE_FILE set, only the first process to get there dies (it creates
the file first), so a prefork pool's replacement child carries on.
"""

from __future__ import annotations

import logging
import os
import signal

from django.conf import settings

logger = logging.getLogger("stevora.faults")


def fault_point(name: str) -> None:
    if settings.STEVORA["FAULT_POINT"] != name:
        return
    once = os.environ.get("STEVORA_FAULT_ONCE_FILE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    logger.warning("fault point %s reached: killing process %s", name, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
