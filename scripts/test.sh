#!/usr/bin/env bash
# The test command of the README: sets up .venv (scripts/setup.sh), then runs the whole suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest -q "$@"
