# Sourced: sets PYTHON to a CPython 3.12, from EMBER_PYTHON, then pyenv, then PATH.
if [[ -n "${EMBER_PYTHON:-}" ]]; then
    PYTHON="$EMBER_PYTHON"
else
    PYTHON=""
    root="${PYENV_ROOT:-$HOME/.pyenv}"
    for candidate in $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do
        PYTHON="$candidate"
        break
    done
    if [[ -z "$PYTHON" ]] && command -v python3.12 >/dev/null; then
        PYTHON="$(command -v python3.12)"
    fi
fi
if [[ -z "$PYTHON" || ! -x "$PYTHON" ]]; then
    echo "ember: no python3.12 found; set EMBER_PYTHON, or install it with pyenv (pyenv install 3.12)" >&2
    exit 1
fi
export EMBER_PYTHON="$PYTHON"
