"""Development-only helpers that drive real processes and a real registry, shared by ``tests/``
and ``bench/``.

Why a package of its own: a benchmark must not import the test suite (it would run test
configuration and fixtures it does not need, and a test refactoring would silently change what a
benchmark measures), and a test double must not live inside a shipped package. ``testkit`` is
neither: it is not listed in ``[tool.setuptools.packages.find]`` and so never reaches the wheel.

- :mod:`testkit.cli_args`: ``iotx509`` command lines (``certs issue``'s fixed options).
- :mod:`testkit.mosquitto`: a real Mosquitto 2 broker requiring client certificates.
- :mod:`testkit.registry`: the real :class:`~server_stub.registry.Registry` on a temporary SQLite
  file, with accounts, products, CAs registered with proof of possession and real associations.
"""
