#!/usr/bin/env bash
# Prints the path of a CPython X.Y interpreter: pythonX.Y on PATH, else pyenv's newest X.Y.
set -euo pipefail
want=$1
if command -v "python$want" >/dev/null 2>&1 && "python$want" -c 'import sys' >/dev/null 2>&1; then
  command -v "python$want"; exit 0
fi
root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
for d in $(ls -d "$root"/versions/"$want".* 2>/dev/null | sort -V -r); do
  if [ -x "$d/bin/python" ]; then echo "$d/bin/python"; exit 0; fi
done
echo "no Python $want found (install it, e.g. 'pyenv install $want')" >&2
exit 1
