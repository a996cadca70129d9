#!/usr/bin/env bash
# make fuzz: installs what the harnesses need beyond tests/install_deps.sh's packages: clang and its sanitizer and
# libFuzzer runtimes (Debian clang, libclang-rt-dev), plus the libraries the sources include, through
# tests/install_deps.sh. Idempotent; quiet when all are present. Only `make fuzz` needs these; the build and the
# tests do not.
set -euo pipefail
PKGS="clang libclang-rt-dev make nlohmann-json3-dev libonig-dev"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# a clang that links -fsanitize=fuzzer from elsewhere (not Debian's packages) is enough
if ! { installed clang && installed libclang-rt-dev; } && command -v "${FUZZ_CXX:-clang++}" >/dev/null &&
   echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
   "${FUZZ_CXX:-clang++}" -x c++ -fsanitize=fuzzer,address,undefined - -o /dev/null 2>/dev/null; then
  PKGS="make nlohmann-json3-dev libonig-dev"
fi
exec bash "$(dirname "$0")/../install_deps.sh" $PKGS
