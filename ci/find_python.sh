# find_python X.Y: print the path of a Python X.Y interpreter (PATH first, then pyenv's versions).
find_python() {
  local v=$1 p
  if p=$(command -v "python$v") && "$p" -V >/dev/null 2>&1; then echo "$p"; return; fi
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v"; do
    if [ -x "$p" ]; then echo "$p"; return; fi
  done
  echo "python$v not found (install it, or put it on PATH)" >&2
  return 1
}
