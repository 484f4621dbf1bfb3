"""The firmware helpers' exception tree (one root: :class:`FirmwareHelpersError`)."""

from __future__ import annotations


class FirmwareHelpersError(Exception):
    """Root of every error the firmware helpers raise."""


class IssuanceError(FirmwareHelpersError):
    """A certificate could not be issued (bad CA, bad input, duplicate SN, ...)."""


class DuplicateSerialError(IssuanceError):
    """The SN ledger already records this SN for this CA."""

    def __init__(self, message: str, *, sn: str, ca_sn: str) -> None:
        super().__init__(message)
        self.sn = sn
        self.ca_sn = ca_sn
