#!/usr/bin/env bash
# QGIS 3.40 LTR check, as a Debian 13 user installs the plugin: a debootstrap trixie root,
# `apt-get install qgis python3-qgis` (nothing else: no python3-venv, no pip), the zip of
# `make package` unzipped into a fresh QGIS profile, `slimdiffsr:setup` (timed, twice: the
# second run must find the environment healthy), then `slimdiffsr:upscale` on a real raster.
# Prints QGIS and Python versions, setup time, environment size and the upscale result.
#
# Why a chroot: the development machines run Debian 12 (QGIS 3.22, Python 3.11); Debian 13's
# QGIS runs Python 3.13, which needs other wheels (numpy 2) and lacks ensurepip and pip.
#
# Usage (root; network to a Debian mirror and the package index):
#   sudo make check-qgis340            or   sudo tools/check_trixie.sh
# Settings (environment): TRIXIE_ROOT (default /var/tmp/slimdiffsr-trixie, reused when it
# already has QGIS), DEBIAN_MIRROR, TORCH_BUILD (setup's enum: 0 auto, 1 cpu, 2 cuda; default
# 1), TORCH_INDEX_URL (a URL, or a folder with the CPU torch wheel), WHEELHOUSE (folders on
# this machine are copied into the root), INPUT (the raster to upscale), KEEP_ENV=1 (reuse the
# previous run's profile and environment).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=${TRIXIE_ROOT:-/var/tmp/slimdiffsr-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
torch_build=${TORCH_BUILD:-1}
input=${INPUT:-${SLIMDIFFSR_SHARED:-$here/../shared}/data/fixtures/webodm/orthophoto.tif}
config=/root/slimdiffsr-check  # QGIS_CUSTOM_CONFIG_PATH inside the root: a fresh profile
profile=$config/profiles/default
plugins=$profile/python/plugins

die() { echo "error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "the check builds a Debian root with debootstrap and chroot; run it as root (sudo)"
command -v debootstrap >/dev/null || die "debootstrap is missing; install it (sudo apt install debootstrap) and run again"
[ -f "$input" ] || die "the input raster $input does not exist; set INPUT to a GeoTIFF"
case "$root" in "$here"|"$here"/*) die "TRIXIE_ROOT ($root) is inside the repository; choose a folder outside it" ;; esac

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" || true; done
}
trap cleanup EXIT
mount_in() {  # mount_in TYPE-OR-bind SOURCE TARGET (skipped when already mounted)
    mountpoint -q "$3" && return 0
    if [ "$1" = bind ]; then mount --bind "$2" "$3"; else mount -t "$1" "$2" "$3"; fi
    mounted+=("$3")
}
# A headless desktop user: root's HOME, no display, nothing from this shell's environment
# (its pip or proxy settings would not exist on a user's machine).
in_root() {
    chroot "$root" env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR=/tmp/runtime-root QGIS_CUSTOM_CONFIG_PATH=$config "$@"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# 1. The Debian 13 root with QGIS from apt.
t0=$(now)
if [ ! -x "$root/usr/bin/apt-get" ]; then
    echo "== debootstrap trixie -> $root"
    debootstrap --variant=minbase trixie "$root" "$mirror" > "$root.debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $root.debootstrap.log)"
fi
mount_in proc proc "$root/proc"
mount_in sysfs sys "$root/sys"
mount_in bind /dev "$root/dev"
mount_in bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
if [ ! -x "$root/usr/bin/qgis_process.bin" ]; then
    echo "== apt-get install qgis python3-qgis"
    in_root sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qgis python3-qgis' \
        > "$root.apt.log" 2>&1 || die "apt-get install qgis failed (see $root.apt.log)"
fi
# Sites behind a TLS-inspecting proxy: their CA, as their users' machines have it.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates >/dev/null 2>&1 || true
fi
echo "root ready in $(since "$t0") s"
qgis_process=/usr/bin/qgis_process
[ -x "$root/usr/bin/qgis_process.bin" ] && qgis_process=/usr/bin/qgis_process.bin
mkdir -p "$root/tmp/runtime-root" && chmod 700 "$root/tmp/runtime-root"

# 2. The zip, installed into a fresh profile as "Install from ZIP" does, and enabled.
echo "== make package"
make -C "$here" --no-print-directory package
zip=$(ls -t "$here"/build/slimdiffsr-*.zip | head -1)
cp "$zip" "$root/tmp/slimdiffsr.zip"
[ "${KEEP_ENV:-0}" = 1 ] || rm -rf "${root:?}$config"
rm -rf "${root:?}$plugins/slimdiffsr"
in_root sh -c "mkdir -p $plugins && python3 -m zipfile -e /tmp/slimdiffsr.zip $plugins"
in_root $qgis_process plugins enable slimdiffsr >/dev/null 2>&1 || true
in_root $qgis_process list 2>/dev/null | grep -q "slimdiffsr:upscale" \
    || die "QGIS in $root does not list slimdiffsr:upscale after enabling the plugin"
qgis_version=$(in_root $qgis_process --version 2>/dev/null | sed -n 's/^QGIS \([^ ]*\).*/\1/p' | head -1)
python_version=$(in_root python3 -c 'import sys; print(sys.version.split()[0])')
prereqs=$(in_root python3 -c 'import importlib.util as u; print(", ".join(m + (": yes" if u.find_spec(m) else ": no") for m in ("venv", "ensurepip", "pip")))')
echo "QGIS $qgis_version, Python $python_version ($prereqs)"

# 3. slimdiffsr:setup, timed; then again (must say healthy in seconds).
setup_args=(TORCH_BUILD="$torch_build")
if [ -d "${TORCH_INDEX_URL:-}" ]; then  # a folder with the CPU torch wheel: copied into the root
    rm -rf "$root/tmp/torch-wheels" && cp -r "$TORCH_INDEX_URL" "$root/tmp/torch-wheels"
    setup_args+=(TORCH_INDEX_URL=/tmp/torch-wheels)
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    setup_args+=(TORCH_INDEX_URL="$TORCH_INDEX_URL")
fi
if [ -n "${WHEELHOUSE:-}" ]; then
    rm -rf "$root/tmp/wheelhouse" && cp -r "$WHEELHOUSE" "$root/tmp/wheelhouse"
    setup_args+=(WHEELHOUSE=/tmp/wheelhouse)
fi
log=$root.setup.log
echo "== qgis_process run slimdiffsr:setup -- ${setup_args[*]} (log: $log)"
t0=$(now)
in_root $qgis_process run slimdiffsr:setup -- "${setup_args[@]}" > "$log" 2>&1 \
    || die "slimdiffsr:setup failed after $(since "$t0") s: $(grep -m1 '^ERROR:' "$log" || tail -1 "$log")"
setup_s=$(since "$t0")
env_mb=$(sed -n 's/^ENV_SIZE_MB:[[:space:]]*//p' "$log" | tail -1)
# Progress dots can precede a message on its line ("0...10WARNING: ...").
grep -oE "(WARNING:.*|^creating .*|^installing .*|.*no ensurepip.*|^backend environment ready.*|^self-test: .*)" "$log" \
    | cut -c1-220 || true
t0=$(now)
in_root $qgis_process run slimdiffsr:setup -- "${setup_args[@]}" > "$log.2" 2>&1 \
    || die "the second slimdiffsr:setup failed: $(grep -m1 '^ERROR:' "$log.2" || tail -1 "$log.2")"
again_s=$(since "$t0")
grep -q "already set up and healthy" "$log.2" || die "the second setup did not find the environment healthy (see $log.2)"

# 4. slimdiffsr:upscale on the real raster.
cp "$input" "$root/tmp/input.tif"
rm -f "$root/tmp/input_sr.tif"
t0=$(now)
in_root $qgis_process run slimdiffsr:upscale -- INPUT=/tmp/input.tif OUTPUT=/tmp/input_sr.tif > "$root.upscale.log" 2>&1 \
    || die "slimdiffsr:upscale failed: $(grep -m1 '^ERROR:' "$root.upscale.log" || tail -1 "$root.upscale.log")"
upscale_s=$(since "$t0")
device=$(grep -m1 -o 'device: [^)]*' "$root.upscale.log" || echo "device: ?")
size=$(in_root "$profile/slimdiffsr/env/bin/python" -c \
    'import rasterio, sys; d = rasterio.open(sys.argv[1]); i = rasterio.open(sys.argv[2]); print(f"{i.width}x{i.height} -> {d.width}x{d.height}, {d.count} bands, {d.crs}")' \
    /tmp/input_sr.tif /tmp/input.tif)
torch=$(in_root "$profile/slimdiffsr/env/bin/python" -c 'import torch; print(torch.__version__, "cuda" if torch.version.cuda else "cpu")')

echo
echo "QGIS $qgis_version (Debian 13), Python $python_version ($prereqs)"
echo "setup: ${setup_s} s, environment ${env_mb} MB (torch $torch); second run ${again_s} s (healthy)"
echo "upscale $(basename "$input"): $size in ${upscale_s} s ($device)"
