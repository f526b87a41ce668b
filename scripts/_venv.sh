# shellcheck shell=bash
# Sourced by scripts/test and scripts/run: creates .venv if missing and installs the
# requirements file named by FAIRBOOK_REQUIREMENTS (scripts/run: requirements.txt, scripts/test:
# requirements-dev.txt) into it, skipping the install while the files are unchanged; then
# builds the compiled modules (scripts/build_native.py). Sets ROOT, VENV, PY.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "[fairbook] creating $VENV" >&2
    python3 -m venv "$VENV"
fi

# Install a requirements file unless its stamp says these exact files are installed already.
_fb_install() {
    local file="$1" stamp="$VENV/.stamp-$1" want
    want="$( { cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1; "$PY" -V; } 2>&1 | tr '\n' ' ')"
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
    echo "[fairbook] installing $file into .venv" >&2
    rm -f "$stamp"
    if ! "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/$file" \
            >"$VENV/pip-install.log" 2>&1; then
        cat "$VENV/pip-install.log" >&2
        echo "[fairbook] pip install failed (log: $VENV/pip-install.log)" >&2
        return 1
    fi
    printf '%s' "$want" >"$stamp"
}
_fb_install "${FAIRBOOK_REQUIREMENTS:-requirements.txt}" || exit 1

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
