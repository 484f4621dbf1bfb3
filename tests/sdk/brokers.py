"""The real Mosquitto runner lives in :mod:`testkit.mosquitto` (shared with ``bench/``)."""

from testkit.mosquitto import MOSQUITTO, Mosquitto, free_port, run_mosquitto, wait_for_port

__all__ = ["MOSQUITTO", "Mosquitto", "free_port", "run_mosquitto", "wait_for_port"]
