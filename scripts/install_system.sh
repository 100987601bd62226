#!/usr/bin/env bash
# System packages the tests need beside the venv, from Debian with apt-get:
# - `prometheus` (which ships `promtool`), for tests/deploy (promtool check config/rules/metrics, a
#   real Prometheus scraping the gateway);
# - `chromium` and `chromium-driver`, for tests/serving/test_page.py (the control page in a real
#   headless browser, driven by selenium; nothing is downloaded at test time);
# - `nginx-light`, the gateway's front (serving/front.py; tests/reliability/test_front.py).
# Idempotent: installs only the packages whose command is missing, nothing when all are there.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install_system: prometheus, chromium, chromedriver and nginx already installed, nothing to do"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_system: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install_system: installing Debian's ${missing[*]} with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install_system: $(prometheus --version 2>&1 | head -n 1); $(chromium --version); $(chromedriver --version | head -n 1); $(/usr/sbin/nginx -v 2>&1)"
