#!/usr/bin/env bash
# make fuzz: installs what the harnesses need beyond tests/install_deps.sh's packages: clang and its sanitizer and
# libFuzzer runtimes (Debian clang, libclang-rt-dev), plus the libraries the sources include. Idempotent; quiet when
# all are present. Only `make fuzz` needs these; the build and the tests do not.
set -euo pipefail
PKGS="clang libclang-rt-dev make nlohmann-json3-dev libonig-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
# a clang that links -fsanitize=fuzzer from elsewhere (not Debian's packages) is enough
if [ "$missing" != "${missing/clang/}" ] && command -v "${FUZZ_CXX:-clang++}" >/dev/null &&
   echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
   "${FUZZ_CXX:-clang++}" -x c++ -fsanitize=fuzzer,address,undefined - -o /dev/null 2>/dev/null; then
  missing=$(echo "$missing" | sed 's/ clang\b//; s/ libclang-rt-dev//')
  [ -z "${missing// /}" ] && exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
