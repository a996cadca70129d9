#!/usr/bin/env bash
# gpu_deps.sh — the build's third-party packages for a borrowed GPU machine that has no package registry.
#
#   bash tests/gpu_deps.sh fetch            here (Debian 12, amd64, apt reachable): the .deb files into .gpu-debs/
#                                           (git-ignored; the GPU run carries it: carry [".gpu-debs"])
#   bash tests/gpu_deps.sh unpack [PREFIX]  there (tests/gpu_check.sh calls it): dpkg -x each .deb into PREFIX
#                                           (default build/gpu-deps, never /), adds the link names the linker needs,
#                                           finds NCCL, and writes PREFIX/env.sh; `. PREFIX/env.sh` exports CPATH,
#                                           LIBRARY_PATH and LD_LIBRARY_PATH so the Makefile's own -lonig -lnccl and
#                                           <nlohmann/json.hpp> <doctest/doctest.h> <oniguruma.h> <nccl.h> resolve.
#
# Carried: nlohmann-json3-dev, doctest-dev (headers), libonig-dev + libonig5, and NCCL's header nccl.h only.
# libnccl.so.2 is ~210 MB (~190 MB gzipped: over the carry's 64 MiB); NCCL on this machine is not an apt package
# anyway. The GPU image has NCCL as the nvidia-nccl-cu13 Python wheel (torch's): unpack links the image's
# libnccl.so.2 (CUDA_HOME, the loader's cache, or the wheel) into PREFIX/nccl/lib under the link name libnccl.so,
# and uses the image's nccl.h when it has one, else the carried one. Only link-name symlinks go into PREFIX, never
# a whole wheel or CUDA directory, so no other header or library of the image is shadowed.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT="$(pwd)"
DEBS_DIR="$ROOT/.gpu-debs"
PKGS="nlohmann-json3-dev doctest-dev libonig-dev libonig5"
MAX_MIB=20

die() { echo "gpu_deps: error: $*" >&2; exit 1; }
note() { echo "gpu_deps: $*"; }

# ---------------------------------------------------------------------------------------------------- fetch (here)
fetch() {
    command -v apt-get >/dev/null 2>&1 || die "fetch runs on a Debian/Ubuntu machine with apt-get"
    [ "$(dpkg --print-architecture)" = amd64 ] || die "this machine is $(dpkg --print-architecture), the GPU machine is amd64"
    local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    local tmp; tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu-debs.XXXXXX")" || die "mktemp failed"
    chmod 755 "$tmp"   # apt-get download as root drops to the _apt user, which must be able to write here
    note "apt-get update"
    $SUDO apt-get update -qq || die "apt-get update failed"
    note "apt-get download $PKGS"
    local sandbox=(); [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$tmp" && apt-get "${sandbox[@]}" download $PKGS) || { rm -rf "$tmp"; die "apt-get download failed"; }
    # plain names (package_version_arch.deb has '~', '+', ':'), and every one amd64 or arch-independent
    local f arch pkg
    for f in "$tmp"/*.deb; do
        arch="$(dpkg-deb -f "$f" Architecture)" pkg="$(dpkg-deb -f "$f" Package)"
        case "$arch" in amd64|all) ;; *) rm -rf "$tmp"; die "$(basename "$f") is for $arch, not amd64";; esac
        echo "$pkg $(dpkg-deb -f "$f" Version) $arch" >> "$tmp/VERSIONS"
        mv "$f" "$tmp/$pkg.deb"
    done
    # NCCL: an apt package only when this machine's apt sources have one, and never the ~200 MB libnccl2 itself
    local nccl_h=""
    for f in "${CUDA_HOME:-/usr/local/cuda}/include/nccl.h" /usr/include/nccl.h /usr/local/include/nccl.h; do
        [ -f "$f" ] && { nccl_h="$(readlink -f "$f")"; break; }
    done
    [ -n "$nccl_h" ] || { rm -rf "$tmp"; die "no nccl.h on this machine (looked in \$CUDA_HOME/include, /usr/include, /usr/local/include)"; }
    mkdir -p "$tmp/nccl"
    cp "$nccl_h" "$tmp/nccl/nccl.h"
    local ver; ver="$(awk '/#define NCCL_(MAJOR|MINOR|PATCH) /{v=v (v?".":"") $3} END{print v}' "$tmp/nccl/nccl.h")"
    echo "nccl.h $ver from $nccl_h (NVIDIA's redistributable header; libnccl.so.2 comes from the GPU image)" > "$tmp/nccl/SOURCE"
    rm -rf "$DEBS_DIR"
    mv "$tmp" "$DEBS_DIR" || die "cannot move $tmp to $DEBS_DIR"
    chmod -R u+rwX,go+rX "$DEBS_DIR"
    note "in $DEBS_DIR:"
    (cd "$DEBS_DIR" && for f in *.deb VERSIONS nccl/*; do
        printf '  %-48s %8s bytes  %s\n' "$f" "$(stat -c %s "$f")" "$( [ "${f%.deb}" != "$f" ] && dpkg-deb -f "$f" Architecture || true)"
    done)
    local bytes; bytes="$(du -sb "$DEBS_DIR" | cut -f1)"
    note "total $(awk -v b="$bytes" 'BEGIN{printf "%.2f MiB (%d bytes)", b/1048576, b}')"
    [ "$bytes" -le $((MAX_MIB * 1048576)) ] || die "over the ${MAX_MIB} MiB meant for the carry"
    note "now run on the GPU machine with carry [\".gpu-debs\"]: make gpu-check"
}

# -------------------------------------------------------------------------------------------------- unpack (there)
# extracts one .deb: dpkg-deb when the image has it (and it works), else python3 (ar archive + tarfile: xz, gz, bz2)
extract_deb() {
    local deb="$1" dest="$2"
    if command -v dpkg-deb >/dev/null 2>&1 && dpkg-deb -x "$deb" "$dest"; then return 0; fi
    local py; py="$(find_python)" || { echo "gpu_deps: neither dpkg-deb nor python3 to unpack $deb" >&2; return 1; }
    "$py" - "$deb" "$dest" <<'EOF'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", deb + ": not an ar archive"
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    pos += 60 + size + (size & 1)
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as t:
            if hasattr(tarfile, "tar_filter"):
                t.extractall(dest, filter="tar")
            else:
                t.extractall(dest)
        sys.exit(0)
sys.exit(deb + ": no data.tar member (zstd-compressed .debs need dpkg-deb)")
EOF
}
find_python() {
    local p
    for p in /opt/torch/.venv/bin/python3 python3; do
        command -v "$p" >/dev/null 2>&1 && { command -v "$p"; return 0; }
    done
    return 1
}
# the image's NCCL: prints "KIND PATH" lines: "h DIR" for a directory holding nccl.h, "lib FILE" for libnccl.so.2,
# in order of preference (the CUDA toolkit, the system, the Python wheel)
image_nccl() {
    local cuda="${CUDA_HOME:-/usr/local/cuda}" d f sp py
    for d in "$cuda/include" "$cuda/targets/x86_64-linux/include" /usr/include /usr/local/include; do
        [ -f "$d/nccl.h" ] && echo "h $d"
    done
    for f in "$cuda/lib64/libnccl.so.2" "$cuda/lib/libnccl.so.2" "$cuda/targets/x86_64-linux/lib/libnccl.so.2"; do
        [ -e "$f" ] && echo "lib $f"
    done
    if command -v ldconfig >/dev/null 2>&1; then
        ldconfig -p 2>/dev/null | awk '$1 == "libnccl.so.2" && /x86-64/ {print "lib " $NF}'
    fi
    # the wheel (nvidia-nccl-cu13): site-packages/nvidia/nccl/{include,lib} or another nvidia/*/ layout
    local sps=""
    if py="$(find_python)"; then
        sps="$("$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null)"
    fi
    sps="$sps"$'\n'"$(ls -d /opt/torch/.venv/lib/python3*/site-packages /usr/local/lib/python3*/dist-packages 2>/dev/null)"
    while IFS= read -r sp; do
        [ -n "$sp" ] && [ -d "$sp/nvidia" ] || continue
        find "$sp/nvidia" -maxdepth 4 \( -name nccl.h -printf 'h %h\n' \) -o \( -name 'libnccl.so.2' -printf 'lib %p\n' \) 2>/dev/null
    done <<< "$sps"
}
unpack() {
    local prefix="${1:-$ROOT/build/gpu-deps}"
    case "$prefix" in /) die "refusing to unpack into /";; /*) ;; *) prefix="$ROOT/$prefix";; esac
    rm -rf "$prefix"
    mkdir -p "$prefix" || die "cannot create $prefix"
    local inc=() lib=() run=() deb n=0
    if [ -d "$DEBS_DIR" ]; then
        for deb in "$DEBS_DIR"/*.deb; do
            [ -f "$deb" ] || continue
            extract_deb "$deb" "$prefix" || die "could not unpack $deb"
            n=$((n + 1))
        done
        note "unpacked $n .deb files from $DEBS_DIR into $prefix"
    else
        note "no $DEBS_DIR (bash tests/gpu_deps.sh fetch on a Debian machine makes it): the image's own packages are used"
    fi
    [ -d "$prefix/usr/include" ] && inc+=("$prefix/usr/include")
    # every library directory with a shared object: link names (libX.so) for the linker when only libX.so.N exists
    local d f base
    while IFS= read -r d; do
        for f in "$d"/*.so.*; do
            [ -e "$f" ] || continue
            base="${f##*/}"; base="${base%%.so.*}.so"
            [ -e "$d/$base" ] || { ln -s "${f##*/}" "$d/$base"; note "made link name $d/$base -> ${f##*/}"; }
        done
        lib+=("$d"); run+=("$d")
    done < <(find "$prefix" -type f -name '*.so.*' -printf '%h\n' 2>/dev/null | sort -u)

    # NCCL: the image's header and library when it has them, the carried header otherwise
    local h_dir="" l_file="" kind path
    while read -r kind path; do
        case "$kind" in
            h)   [ -z "$h_dir" ] && h_dir="$path" ;;
            lib) [ -z "$l_file" ] && l_file="$(readlink -f "$path")" ;;
        esac
    done < <(image_nccl)
    mkdir -p "$prefix/nccl/include" "$prefix/nccl/lib"
    if [ -n "$h_dir" ]; then
        note "nccl.h: the image's, $h_dir/nccl.h"
        ln -sf "$h_dir/nccl.h" "$prefix/nccl/include/nccl.h"
    elif [ -f "$DEBS_DIR/nccl/nccl.h" ]; then
        note "nccl.h: the carried one ($(cat "$DEBS_DIR/nccl/SOURCE" 2>/dev/null || echo "$DEBS_DIR/nccl/nccl.h"))"
        cp "$DEBS_DIR/nccl/nccl.h" "$prefix/nccl/include/nccl.h"
    else
        note "warning: no nccl.h in the image nor in $DEBS_DIR/nccl: the CUDA build will fail"
    fi
    if [ -z "$l_file" ] && [ -f "$DEBS_DIR/nccl/libnccl.so.2" ]; then l_file="$DEBS_DIR/nccl/libnccl.so.2"; fi
    if [ -n "$l_file" ]; then
        note "libnccl.so.2: $l_file"
        ln -sf "$l_file" "$prefix/nccl/lib/libnccl.so.2"
        ln -sf libnccl.so.2 "$prefix/nccl/lib/libnccl.so"
        lib+=("$prefix/nccl/lib"); run+=("$prefix/nccl/lib")
    else
        note "warning: no libnccl.so.2 in the image (CUDA_HOME, ldconfig, the nvidia-nccl wheel): the CUDA link will fail"
    fi
    [ -e "$prefix/nccl/include/nccl.h" ] && inc+=("$prefix/nccl/include")

    join() { local IFS=:; echo "$*"; }
    {
        echo "# written by tests/gpu_deps.sh unpack; source it: . $prefix/env.sh"
        [ ${#inc[@]} -gt 0 ] && echo "export CPATH=\"$(join "${inc[@]}")\${CPATH:+:\$CPATH}\""
        [ ${#lib[@]} -gt 0 ] && echo "export LIBRARY_PATH=\"$(join "${lib[@]}")\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
        [ ${#run[@]} -gt 0 ] && echo "export LD_LIBRARY_PATH=\"$(join "${run[@]}")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
        true
    } > "$prefix/env.sh"
    note "wrote $prefix/env.sh:"
    sed 's/^/  /' "$prefix/env.sh"
}

case "${1:-}" in
    fetch)  fetch ;;
    unpack) shift; unpack "$@" ;;
    *) echo "usage: bash tests/gpu_deps.sh fetch | unpack [PREFIX]" >&2; exit 2 ;;
esac
