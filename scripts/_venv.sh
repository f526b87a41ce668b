# shellcheck shell=bash
# Sourced by scripts/test and scripts/run: creates .venv if missing and installs
# requirements.txt into it, skipping the install while requirements.txt is unchanged;
# then builds the optional native modules (scripts/build_native.py).
# Sets ROOT, VENV, PY.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "[fairbook] creating $VENV" >&2
    python3 -m venv "$VENV"
fi

_fb_stamp="$VENV/.requirements.stamp"
_fb_want="$( { sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1; "$PY" -V; } 2>&1 | tr '\n' ' ')"
if [ "$(cat "$_fb_stamp" 2>/dev/null)" != "$_fb_want" ]; then
    echo "[fairbook] installing requirements.txt into .venv" >&2
    rm -f "$_fb_stamp"
    if ! "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt" \
            >"$VENV/pip-install.log" 2>&1; then
        cat "$VENV/pip-install.log" >&2
        echo "[fairbook] pip install failed (log: $VENV/pip-install.log)" >&2
        exit 1
    fi
    printf '%s' "$_fb_want" >"$_fb_stamp"
fi
unset _fb_stamp _fb_want

# Compile the hot modules with mypyc (rebuilt only when a source changed). Optional: on a
# failure, or with FAIRBOOK_PURE=1, everything runs as plain Python.
if [ "${FAIRBOOK_PURE:-}" = 1 ]; then
    "$PY" "$ROOT/scripts/build_native.py" --clean >&2
elif ! "$PY" "$ROOT/scripts/build_native.py" >&2; then
    # CI must test what production runs: a build that broke (say, a type error mypyc
    # refuses) fails the run there instead of quietly testing pure Python only.
    [ -n "${CI:-}" ] && exit 1
    echo "[fairbook] continuing with pure Python modules" >&2
fi
