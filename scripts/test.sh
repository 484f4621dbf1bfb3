#!/usr/bin/env bash
# The project's one test command (README, .ci/run). It installs what the tests need:
#   - system packages: openssl, mosquitto (broker, for side-by-side tests and benchmarks),
#     mosquitto-clients (mosquitto_pub / mosquitto_sub, real command-line MQTT clients),
#     chromium and fonts (the web console's tests drive Debian's headless Chromium through
#     Playwright; Playwright's own browser download is never used);
#   - the project itself with every extra and the test tools.
# Then it runs the linters and the whole suite, heavy checks included (marker "heavy").
# Benchmarks (bench/) are not tests; run them with `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff"; $PY -m ruff check . && $PY -m ruff format --check .
echo "== mypy"; $PY -m mypy
echo "== pytest (markers: ${IOTX509_TEST_MARKERS:-all but bench})"
exec $PY -m pytest -m "${IOTX509_TEST_MARKERS:-not bench}" "$@"
