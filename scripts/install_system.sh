#!/usr/bin/env bash
# System packages the tests need beside the venv: Debian's `prometheus` (which ships `promtool`),
# for tests/deploy (promtool check config/rules/metrics, a real Prometheus scraping the gateway).
# Idempotent: installs nothing when promtool is already on PATH.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  echo "install_system: prometheus already installed ($(command -v promtool)), nothing to do"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_system: need root or sudo to apt-get install prometheus" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install_system: promtool missing, installing Debian's prometheus package with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
echo "install_system: installed $(prometheus --version 2>&1 | head -n 1)"
