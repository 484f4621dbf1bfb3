"""One fuzzing process: ``python -m fuzz.child TARGET [libFuzzer options] CORPUS_DIR``.

TARGET is a name from :data:`fuzz.targets.TARGETS` or ``module:function`` (the runner's own
tests use the latter to check that a crash is caught).

The project's parsers are imported under atheris' instrumentation so that coverage guides the
mutations; the process ends when libFuzzer's ``-max_total_time`` is reached or on a crash (then
libFuzzer writes the input to its ``-artifact_prefix``).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]


def main() -> None:
    with atheris.instrument_imports(include=["server_stub", "firmware_helpers", "device_sdk"]):
        from fuzz import seeds, targets
    name = sys.argv[1]
    target = targets.resolve(name)
    # warm the seed CA before fuzzing so key generation is not charged to the first input
    seeds.test_ca()
    seeds.verification()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
