#!/usr/bin/env bash
# make-venv.sh X.Y DIR PIP-ARGS...: a virtualenv of CPython X.Y in DIR with PIP-ARGS installed,
# remade only when setup.cfg is newer than the last install.
set -euo pipefail
version=$1 dir=$2
shift 2
if [ -f "$dir/.installed" ] && [ ! setup.cfg -nt "$dir/.installed" ]; then exit 0; fi
py=$(scripts/find-python.sh "$version")
rm -rf "$dir"
"$py" -m venv "$dir"
"$dir/bin/pip" install -q --upgrade pip
"$dir/bin/pip" install -q "$@"
touch "$dir/.installed"
