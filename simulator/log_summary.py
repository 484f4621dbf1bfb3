"""One summary line instead of one log line per device.

The SDK logs each accepted connection at INFO and each retry at WARNING: right for one device,
thousands of lines for a fleet. Under Locust, :class:`DeviceLogSummary` (a filter on the log
handlers) counts the SDK's records instead; the first few warnings of each interval still show,
the rest only in the count. :meth:`DeviceLogSummary.flush` logs the summary line, on a timer
and once more when the test stops.
"""

from __future__ import annotations

import logging
import threading

SDK_LOGGER = "device_sdk"
WARNINGS_SHOWN_PER_INTERVAL = 5

log = logging.getLogger(__name__)


class DeviceLogSummary(logging.Filter):
    """Counts (and mostly swallows) the device SDK's log records; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._info = 0
        self._warnings = 0
        self._hidden = 0
        self._total_info = 0
        self._total_warnings = 0

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name != SDK_LOGGER and not name.startswith(SDK_LOGGER + "."):
            return True
        with self._lock:
            if record.levelno >= logging.ERROR:
                return True
            if record.levelno >= logging.WARNING:
                self._warnings += 1
                self._total_warnings += 1
                if self._warnings <= WARNINGS_SHOWN_PER_INTERVAL:
                    return True
                self._hidden += 1
                return False
            if record.levelno >= logging.INFO:
                self._info += 1
                self._total_info += 1
            return False

    def flush(self, counts: str, *, final: bool = False) -> None:
        """Log ``counts`` (the caller's figures) and the SDK records counted since last time."""
        with self._lock:
            info, warnings, hidden = self._info, self._warnings, self._hidden
            self._info = self._warnings = self._hidden = 0
            total_info, total_warnings = self._total_info, self._total_warnings
        if final:
            log.info(
                "devices, whole run: %s; SDK log lines: %d info, %d warnings",
                counts,
                total_info,
                total_warnings,
            )
        else:
            log.info(
                "devices: %s; SDK log lines since the last summary: %d info, %d warnings "
                "(%d not shown)",
                counts,
                info,
                warnings,
                hidden,
            )

    def install(self) -> None:
        """Filter every handler of the root logger (Locust's console and log file)."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)


__all__ = ["DeviceLogSummary"]
