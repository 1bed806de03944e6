#!/usr/bin/env bash
# Runs pytest and treats "no tests collected" (exit 5) as a failure: a green run that tested
# nothing would hide a broken selection or collection.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"${PYTHON:-$here/.venv/bin/python}" -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit $rc
