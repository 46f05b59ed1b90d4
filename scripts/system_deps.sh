#!/usr/bin/env bash
# Offscreen MuJoCo rendering needs EGL with Mesa's software driver. Install it when missing
# (Debian/Ubuntu, as root); otherwise say exactly what is missing and stop.
set -euo pipefail
if ldconfig -p | grep -q 'libEGL.so.1' && ldconfig -p | grep -q 'libEGL_mesa.so.0'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 >/dev/null
else
  echo "openlam: offscreen rendering needs EGL + Mesa (Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri); install them and re-run." >&2
  exit 1
fi
