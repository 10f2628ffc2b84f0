#!/usr/bin/env bash
# Checks the README's "Where things live" map against the tree: every C file
# and Lua script of scheduler/, dispatcher/ and sender/ is named in the map
# and every file the map names there exists; no daemon file is over 900
# lines; every daemon file opens with a comment saying what it owns.
# Usage: tests/check_layout.sh [repo root]
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
map=$(sed -n '/^### Where things live/,/^## /p' README.md)
[ -n "$map" ] || { echo "README.md has no 'Where things live' section"; exit 1; }
fail=0
for dir in scheduler dispatcher sender; do
  # The map's rows for this folder: from its first row to the next folder's.
  rows=$(printf '%s\n' "$map" | awk -v d="| \`$dir/\`" 'index($0, d) == 1 {on = 1; print; next}
        on && /^\| `[a-z]+\/`/ {on = 0} on {print}')
  for f in "$dir"/*.c "$dir"/*.h "$dir"/lua/*.lua; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    # A here-string, not a pipe: grep -q exits at the first match and the
    # writer's SIGPIPE would fail the pipeline under pipefail.
    if ! grep -qF "\`$name\`" <<<"$rows"; then
      echo "$f: not in README's map"; fail=1
    fi
    case "$f" in
      *.lua) head -1 "$f" | grep -q '^--' || { echo "$f: does not open with a comment"; fail=1; } ;;
      *) head -1 "$f" | grep -q '^/\*' || { echo "$f: does not open with a comment"; fail=1; }
         n=$(wc -l < "$f")
         [ "$n" -le 900 ] || { echo "$f: $n lines (over 900)"; fail=1; } ;;
    esac
  done
  for name in $(printf '%s\n' "$rows" | grep -o '`[a-z_]*\.\(c\|h\|lua\)`' | tr -d '`'); do
    [ -e "$dir/$name" ] || [ -e "$dir/lua/$name" ] || { echo "README's map names $dir/$name: no such file"; fail=1; }
  done
done
[ $fail = 0 ] && echo "layout: README map matches scheduler/, dispatcher/, sender/; no file over 900 lines"
exit $fail
