#!/usr/bin/env bash
# Installs the Debian packages that the build, the tests and the demo need, or the packages named as arguments
# (tests/fuzz/install_deps.sh names clang's). Idempotent; quiet when all are present.
set -euo pipefail
PKGS="${*:-g++ make doctest-dev nlohmann-json3-dev libonig-dev libopenmpi-dev openmpi-bin bible-kjv gnuplot-nox}"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
