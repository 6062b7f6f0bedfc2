"""Calico's `log_level` and `log_file_path`: each CNI request recorded in the file the config names.

Calico's plugin writes its log to that file on the host, rotated by size (`log_file_max_size`, MB),
count (`log_file_max_count`) and age (`log_file_max_age`, days). podnet's plugin executable only forwards
the request; the agent does the work, so the agent writes the record, at the config's level: ERROR and
WARNING record failures and configuration warnings, INFO every request's outcome, DEBUG also the
configuration it came with. No `log_file_path`, no file (the agent's own log has every failure anyway).
"""

from __future__ import annotations

import glob
import logging
import logging.handlers
import os
import threading
import time

from podnet.cni.protocol import LOG_LEVELS

# Calico's defaults for the rotation fields.
DEFAULT_MAX_MB = 100
DEFAULT_MAX_COUNT = 10
DEFAULT_MAX_AGE_DAYS = 30

_handlers: dict[tuple, logging.Handler] = {}
_lock = threading.Lock()
_FORMAT = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s")


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Size and count as RotatingFileHandler; age: rotated files older than max_age days go at each rotation."""

    def __init__(self, path: str, max_mb: int, count: int, max_age_days: int):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        super().__init__(path, maxBytes=max_mb << 20, backupCount=count, delay=True)
        self.max_age = max_age_days * 86400
        self.setFormatter(_FORMAT)

    def handleError(self, record: logging.LogRecord) -> None:
        logging.getLogger(__name__).warning("cannot write the CNI log file %s", self.baseFilename)

    def doRollover(self) -> None:
        super().doRollover()
        if self.max_age:
            cutoff = time.time() - self.max_age
            for old in glob.glob(glob.escape(self.baseFilename) + ".*"):
                try:
                    if os.path.getmtime(old) < cutoff:
                        os.unlink(old)
                except OSError:
                    pass


def wants(config: dict, level: int) -> bool:
    return bool(config.get("log_file_path")) and level >= LOG_LEVELS[str(config.get("log_level", "info")).lower()]


def record(config: dict, level: int, message: str) -> None:
    """Append one record to the config's log file, if it has one and the level lets it through.
    A file that cannot be written is the agent's warning, never the request's failure."""
    if not wants(config, level):
        return
    path = config["log_file_path"]
    key = (path, config.get("log_file_max_size", DEFAULT_MAX_MB), config.get("log_file_max_count", DEFAULT_MAX_COUNT),
           config.get("log_file_max_age", DEFAULT_MAX_AGE_DAYS))
    try:
        with _lock:
            handler = _handlers.get(key)
            if handler is None:
                handler = _handlers[key] = _RotatingFile(*key)
            handler.handle(logging.LogRecord("podnet.cni", level, path, 0, message, None, None))
    except OSError as e:
        logging.getLogger(__name__).warning("cannot write the CNI log file %s: %s", path, e)
