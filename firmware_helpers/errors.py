"""The firmware helpers' branch of the kit's exception tree (:class:`FirmwareHelpersError`).

The whole tree is drawn in :mod:`device_sdk.errors`, where its root lives.
"""

from __future__ import annotations

from device_sdk.errors import Iotx509Error


class FirmwareHelpersError(Iotx509Error):
    """Root of every error the firmware helpers raise."""


class IssuanceError(FirmwareHelpersError):
    """A certificate could not be issued (bad CA, bad input, duplicate SN, ...)."""


class DuplicateSerialError(IssuanceError):
    """The SN ledger already records this SN for this CA."""

    def __init__(self, message: str, *, sn: str, ca_sn: str) -> None:
        super().__init__(message)
        self.sn = sn
        self.ca_sn = ca_sn


# --- certificates (issuing, ledger, association CSVs, export) -----------------------------------


class InvalidCAError(IssuanceError):
    """The CA given for issuing is unusable: not a CA, not RSA, or its key does not match."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class InvalidInputError(IssuanceError):
    """Bad names, counts or options, found before anything is written."""


class OutputExistsError(FirmwareHelpersError):
    """A file would be overwritten; the command refuses unless ``--force`` is given."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class LedgerError(FirmwareHelpersError):
    """The SN ledger cannot be read, is corrupt, or is in use by another run."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ExportError(FirmwareHelpersError):
    """Credentials cannot be exported (unreadable inputs, mismatched pair, bad options)."""


class BlobFormatError(FirmwareHelpersError):
    """A credential blob cannot be parsed; ``offset`` says where the problem was found."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class BadMagicError(BlobFormatError):
    """The blob does not start with the credential blob magic."""


class UnsupportedBlobVersionError(BlobFormatError):
    """The blob's major version is newer than this parser understands."""


class TruncatedBlobError(BlobFormatError):
    """The blob ends before its header, its records or its declared length."""


class BlobChecksumError(BlobFormatError):
    """The CRC32 in the header does not match the blob's contents."""


class BadRecordError(BlobFormatError):
    """A record is malformed: wrong padding, missing terminator, duplicate or missing type."""


# --- serial provisioning -------------------------------------------------------------------------


class SerialProvisioningError(FirmwareHelpersError):
    """Root of the serial provisioning errors (framing, protocol, link, board refusals)."""

    exit_code = 1


class FrameError(SerialProvisioningError):
    """Bytes between two delimiters are not a valid frame (bad COBS, too short, too long)."""


class BadCRCError(FrameError):
    """The frame's CRC-16/XMODEM does not match its contents: the line corrupted it."""


class ProtocolError(SerialProvisioningError):
    """A frame is intact but its message cannot be understood (unknown type, bad payload)."""


class ProtocolVersionError(SerialProvisioningError):
    """The other side speaks another protocol version."""

    exit_code = 5

    def __init__(self, message: str, *, local_version: int, remote_version: int) -> None:
        super().__init__(message)
        self.local_version = local_version
        self.remote_version = remote_version


class LinkError(SerialProvisioningError):
    """The serial line failed: the port cannot be opened, or the board stopped answering."""

    exit_code = 4


class PortOpenError(LinkError):
    """``serial.serial_for_url`` could not open the port."""


class LinkTimeoutError(LinkError):
    """The board did not answer within the timeout, after every retry."""


class RetriesExhaustedError(LinkError):
    """Every retry of a request was corrupted on the line (bad CRC) or refused as busy."""


class BoardDisconnectedError(LinkError):
    """The port went away mid-transfer (USB unplugged, board powered off)."""


class BoardRebootedError(LinkError):
    """The board kept rebooting during the transfer; the restarts allowed are used up."""


class BoardError(SerialProvisioningError):
    """The board refused a request; ``code`` is the protocol's numbered error code."""

    exit_code = 3

    def __init__(self, message: str, *, code: int, code_name: str, board_message: str) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.board_message = board_message


class ProvisioningInputError(SerialProvisioningError):
    """The files to provision are unusable (unreadable, not RSA, key does not match)."""

    exit_code = 2


class StoreError(SerialProvisioningError):
    """The board's credential store cannot be read or written."""


class BatchError(SerialProvisioningError):
    """A factory batch cannot go on (no unused pairs, unreadable report, bad directory)."""

    exit_code = 2


class PairInUseError(BatchError):
    """The provisioning report gives this pair to another board already: refused, nothing sent."""
