#!/usr/bin/env bash
# Install the Debian packages the plugin and its backend need, only when missing.
set -euo pipefail
pkgs=(qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv xvfb xauth)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  echo "error: missing system packages: ${missing[*]}. Run 'sudo make install' or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
