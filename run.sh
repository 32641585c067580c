#!/usr/bin/env bash
# Set up (once) and run temsims on a fresh machine.
#   bash run.sh demo [temsims demo options]   the main job
#   bash run.sh test [pytest options]         the whole test suite (what CI runs)
#   bash run.sh test fast [pytest options]    the fast tier: every package, no slow test
#   bash run.sh bench [run_all options]       every benchmark, one table of figures against
#                                             their targets (--help; non-zero if one is missed)
# The virtual environment lives in .venv and is refreshed when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.temsims-installed

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
        echo "run.sh: installing temsims and its dependencies into $VENV (first run: a few minutes)" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e '.[test]'
        echo "$want" > "$STAMP"
    fi
}

command=${1:-}
shift || true
case "$command" in
    demo)
        setup
        exec "$VENV/bin/temsims" demo "$@"
        ;;
    test)
        setup
        "$VENV/bin/ruff" check .
        # One worker per core (at most 4; TEMSIMS_TEST_WORKERS=0 runs in this process),
        # a test module per worker: its module-scoped fixtures are built once. Modules go
        # out in collection order, the longest first (tests/conftest.py, MODULE_SECONDS).
        workers=(-n "${TEMSIMS_TEST_WORKERS:-auto}" --maxprocesses=4 --dist loadfile
                 --no-loadscope-reorder)
        if [ "${1:-}" = fast ]; then
            shift
            exec "$VENV/bin/python" -m pytest "${workers[@]}" -m "not slow" "$@"
        fi
        exec "$VENV/bin/python" -m pytest "${workers[@]}" "$@"
        ;;
    bench)
        setup
        exec "$VENV/bin/python" benchmarks/run_all.py "$@"
        ;;
    *)
        echo "usage: bash run.sh {demo|test|bench} [options]" >&2
        exit 2
        ;;
esac
