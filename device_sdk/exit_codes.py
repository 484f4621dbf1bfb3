"""Exit statuses of device programs (``iotx509 device connect``, the Raspberry Pi example).

Each SDK error class carries its status as ``exit_code`` (:mod:`device_sdk.errors`); the
``iotx509`` command exits with it. The numbers follow BSD ``sysexits.h`` where one fits.

Why the split matters: a service manager must tell a failure that may pass (the network is down,
the clock is not set yet) from one that needs a person (a wrong or expired certificate, a
certificate the platform refuses). The example systemd unit retries the first kind and stops on
the second (``RestartPreventExitStatus=``, :data:`PERMANENT_EXIT_CODES`).

======  =====================  ===============================================================
status  name                   meaning
======  =====================  ===============================================================
1       FAILURE                any other error
65      CREDENTIALS            the certificate/key cannot be used: unreadable, mismatched,
                               wrong password, not RSA, or the certificate has expired
69      NETWORK                the server cannot be reached, or dropped the connection
75      CLOCK                  the certificate is not valid yet by the system clock: the
                               clock is probably not set yet (retry after time sync)
76      CERTIFICATE_REJECTED   the server refused the device certificate in the TLS
                               handshake (is its CA registered and active?)
77      NOT_AUTHORISED         CONNACK 5/4: the certificate is not associated with an
                               enabled device
78      CONFIGURATION          the server could not be verified (server CA, host name), it
                               refused the client id, or it is a generic broker that sends
                               no identity (use --no-identity)
======  =====================  ===============================================================
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    CREDENTIALS = 65  # EX_DATAERR
    NETWORK = 69  # EX_UNAVAILABLE
    CLOCK = 75  # EX_TEMPFAIL
    CERTIFICATE_REJECTED = 76  # EX_PROTOCOL
    NOT_AUTHORISED = 77  # EX_NOPERM
    CONFIGURATION = 78  # EX_CONFIG


#: Failures that retrying cannot fix: a service manager should not restart the program.
PERMANENT_EXIT_CODES = frozenset(
    {
        ExitCode.CREDENTIALS,
        ExitCode.CERTIFICATE_REJECTED,
        ExitCode.NOT_AUTHORISED,
        ExitCode.CONFIGURATION,
    }
)


def exit_code_for(error: BaseException) -> int:
    """The exit status for ``error`` (its ``exit_code``, else :attr:`ExitCode.FAILURE`)."""
    return int(getattr(error, "exit_code", ExitCode.FAILURE))
