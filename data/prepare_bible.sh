#!/usr/bin/env bash
# data/prepare_bible.sh — the default corpus: the King James Bible from the Debian package bible-kjv (public
# domain), rendered at run time and never committed. Writes one chapter per paragraph: the heading line, then one
# verse per line without its number; chapters are separated by a blank line, so `deepseek data prepare` splits
# train/validation by chapter.
#
#   data/prepare_bible.sh OUT.txt        (needs the `bible` program: make deps / apt-get install bible-kjv)
set -euo pipefail
out="${1:?usage: data/prepare_bible.sh OUT.txt}"
command -v bible >/dev/null 2>&1 || { echo "error: the 'bible' program is missing (make deps installs bible-kjv)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# `bible` prints "\nBook N\n\n  V text...\n(continuation)\n": join each verse's wrapped lines, drop the numbers.
bible "Gen1:1-Rev22:21" | awk '
  /^[[:space:]]*$/ { next }
  /^  *[0-9]+ / { if (verse != "") print verse; sub(/^ *[0-9]+ /, ""); verse = $0; next }
  /^[1-3]? ?[A-Z][A-Za-z ]+ [0-9]+$/ {
      if (verse != "") print verse; verse = "";
      if (started) print ""; started = 1; print; next }
  { verse = verse " " $0 }
  END { if (verse != "") print verse }
' > "$out.tmp"
mv "$out.tmp" "$out"
echo "data/prepare_bible.sh: wrote $out ($(wc -c < "$out") bytes, $(grep -c '^$' "$out") chapter breaks)"
