"""The on-board credential store layout, written by serial provisioning (the board agent in
``firmware_helpers.serial``) and read by ``Credentials.from_store(DIR)``.

DIR is mode 0700; the key file 0600, the others 0644. Every file is replaced atomically.
"""

from __future__ import annotations

CERTIFICATE_FILE = "device.cer"
"""The device certificate (PEM; intermediates may follow the leaf)."""
PRIVATE_KEY_FILE = "device.key"
"""The device's RSA private key (PEM)."""
SERVER_CA_FILE = "server-ca.pem"
"""The CA that the device uses to verify the server (optional)."""
MANIFEST_FILE = "manifest.json"
"""``{"files": {name: {"sha256": .., "size": .., "updatedAt": ..}}}``, rewritten on each commit."""
COMMIT_JOURNAL_FILE = ".commit.json"
"""The board agent's commit journal while a provisioning commit is not settled; the files it
names are rewritten from it at the agent's next start, so a renewal waits until it is gone."""
