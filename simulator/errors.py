"""The simulator's branch of the kit's exception tree (:class:`SimulatorError`; the whole
tree is drawn in :mod:`device_sdk.errors`).

Errors from the platform's HTTP API, from reading a fleet or a template, and from allocating
devices to simulated users all derive from it, so ``iotx509 fleet ...`` prints one clear line
instead of a traceback. Errors of the device SDK stay what they are: the simulator reports them
to Locust as failures, with their own message.
"""

from __future__ import annotations

from device_sdk.errors import Iotx509Error


class SimulatorError(Iotx509Error):
    """Root of every error the simulator raises."""


class TemplateError(SimulatorError):
    """A device template is not valid JSON or breaks a rule (the message names the field)."""


class FleetError(SimulatorError):
    """A fleet directory or its ``fleet.json`` is missing, unreadable or inconsistent."""


class FleetExhaustedError(SimulatorError):
    """Every device of the fleet (or of this worker's share) is already taken by a user."""


class FleetCreateError(SimulatorError):
    """A step of ``fleet create`` failed; the message names the step and the platform's answer."""

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step
