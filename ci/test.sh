#!/usr/bin/env bash
# The one test command: installs what is missing, checks style, types and the layer rules,
# then runs every tier of the test suite.
# Extra arguments go to pytest (e.g. ci/test.sh -m "not real").
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/system-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

python3 -m ruff check .
python3 -m mypy ollama_turbo
lint-imports --no-cache

set +e
python3 -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "no tests were collected"
    rc=0
fi
exit "$rc"
