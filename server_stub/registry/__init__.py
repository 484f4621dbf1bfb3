"""The registry: accounts, products, CA certificates, devices and associations, with rules."""

from server_stub.registry.service import DEFAULT_ACCOUNT, Registry

__all__ = ["DEFAULT_ACCOUNT", "Registry"]
