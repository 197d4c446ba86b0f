#!/usr/bin/env bash
# Issue 15's check: clone this repository's HEAD into an empty folder (with no shared folder beside it) and run
# the README's `make test` there. Fails if make fails or if any test skips for a reason other than a
# missing GPU. The clone gets its own venv (--system-site-packages: the installed torch is reused) so its
# `pip install -e` does not repoint this checkout's install. FRESH_CLONE_TARGET picks other make goals
# (e.g. "system-deps install frontend" to check the set-up alone); KEEP_CLONE=1 keeps the folder.
set -euo pipefail
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
TARGET=${FRESH_CLONE_TARGET:-test}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kavach-fresh.XXXXXX")
[ "${KEEP_CLONE:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

git clone -q "$REPO" "$WORK/kavach"
[ ! -e "$WORK/shared" ] && [ -z "$(ls -A "$WORK" | grep -vx kavach)" ]
echo "clone of $(git -C "$WORK/kavach" rev-parse --short HEAD) in $WORK/kavach; make $TARGET"
python3 -m venv --system-site-packages "$WORK/venv"
LOG="$WORK/make.log"
set +e
(cd "$WORK/kavach" && env -u KAVACH_DSRS_DATA make $TARGET PYTHON="$WORK/venv/bin/python") 2>&1 | tee "$LOG"
STATUS=${PIPESTATUS[0]}
set -e
[ "$STATUS" -eq 0 ] || { echo "fresh clone: make $TARGET failed ($STATUS)" >&2; exit 1; }

# pytest -rs lists each skip as "SKIPPED [N] file:line: reason"; only GPU-only tests may skip
BAD=$(grep -E '^SKIPPED \[' "$LOG" | grep -viE 'gpu|cuda' || true)
VITEST_SKIPS=$(grep -E '^ +Tests +.*skipped' "$LOG" || true)
if [ -n "$BAD" ] || [ -n "$VITEST_SKIPS" ]; then
    echo "fresh clone: tests skipped for reasons other than a missing GPU:" >&2
    printf '%s\n' "$BAD" "$VITEST_SKIPS" | sed '/^$/d' >&2
    exit 1
fi
echo "fresh clone: make $TARGET passed; GPU-only skip lines: $(grep -cE '^SKIPPED \[' "$LOG" || true)"
