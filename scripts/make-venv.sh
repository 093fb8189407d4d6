#!/usr/bin/env bash
# make-venv.sh X.Y DIR PIP-ARGS...: a virtualenv of CPython X.Y in DIR with PIP-ARGS installed,
# remade when setup.cfg is newer than the last install or PIP-ARGS changed. It adds nothing of its
# own: the environment is what `pip install PIP-ARGS` gives a user.
set -euo pipefail
version=$1 dir=$2
shift 2
want="$*"
if [ -f "$dir/.installed" ] && [ ! setup.cfg -nt "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$want" ]; then
  exit 0
fi
py=$(scripts/find-python.sh "$version")
rm -rf "$dir"
"$py" -m venv "$dir"
"$dir/bin/pip" install -q --upgrade pip
"$dir/bin/pip" install -q "$@"
printf '%s\n' "$want" >"$dir/.installed"
