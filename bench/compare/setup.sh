#!/usr/bin/env bash
# Tools for `make bench-compare`: wrk (Debian) and a Python 2.7 virtualenv with Sixpack 2.7.0
# under $BENCH_VENVS (default ~/.cache/molam-bench/sixpack). Without Python 2.7 (`python2.7` on
# PATH, pyenv's 2.7.18, or PY27=...) the Sixpack venv is not built and the comparison runs without
# its Sixpack columns. The project and the ceiling run on the project's own .venv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
V=${BENCH_VENVS:-$HOME/.cache/molam-bench}
mkdir -p "$V"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if [ ! -x "$V/sixpack/bin/gunicorn" ]; then
  PY27=${PY27:-}
  for c in "$(command -v python2.7 || true)" "$HOME/.pyenv/versions/2.7.18/bin/python2.7"; do
    [ -z "$PY27" ] && [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys' 2>/dev/null && PY27=$c
  done
  if [ -z "$PY27" ]; then
    echo "no Python 2.7 found: the Sixpack columns will be skipped (set PY27=/path/to/python2.7)" >&2
    exit 0
  fi
  tool=$(mktemp -d)
  "$PY27" -m pip install -q --disable-pip-version-check --target "$tool" 'virtualenv<20.22'
  PYTHONPATH="$tool" "$PY27" -m virtualenv -q "$V/sixpack"
  rm -rf "$tool"
  "$V/sixpack/bin/pip" install -q --disable-pip-version-check -r "$here/sixpack/requirements-py27.txt"
  "$V/sixpack/bin/pip" install -q --disable-pip-version-check --no-deps sixpack==2.7.0
fi
echo "Sixpack venv ready in $V/sixpack"
