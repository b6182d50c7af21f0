#!/usr/bin/env bash
# Set up WyCryst on a fresh machine: system packages, a virtual environment, the project.
#   bash scripts/bootstrap.sh        # install only
#   bash scripts/bootstrap.sh run    # install, then run the main job (`wycryst run`)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Debian packages the platform uses: GPAW + its PAW datasets (real DFT, run as an external
# engine with Debian's python3), a single-node Slurm (slurm-wlm + munge) for the HPC path, and
# chromium for the browser test of the UI.
APT_PACKAGES=(gpaw gpaw-data slurm-wlm munge chromium)
need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU wheel and duckdb below 2 for every package's needs
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
echo "WyCryst installed in .venv"

if [ "${1:-}" = "run" ]; then
  exec .venv/bin/wycryst run
fi
