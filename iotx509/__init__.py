"""The ``iotx509`` command: assembles the subcommands each part of the kit owns."""
