"""Serial provisioning of credentials onto boards (protocol core without I/O, host and board)."""
