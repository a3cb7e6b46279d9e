#!/usr/bin/env bash
# Install what fleetd needs on a Debian machine, idempotently:
#   - a Docker Engine (Debian's docker.io) when none answers, started if not running
#   - mmdebstrap (builds a base image when no registry is reachable)
#   - a virtualenv in .venv with fleetd and its test tools, and /usr/local/bin/fleetd
#   - the fleetd group (members may use the daemon's socket)
# Packages come from this machine's own configured apt and pip sources.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v iptables >/dev/null || missing+=(iptables)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }
if ! docker_answers; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    say "starting docker.service"
    systemctl start docker
  else
    say "starting dockerd (no systemd here; log in /var/log/dockerd.log)"
    nohup dockerd >>/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker_answers && break; sleep 1; done
  docker_answers || { echo "dockerd did not come up; see /var/log/dockerd.log" >&2; exit 1; }
fi
say "docker engine $(docker version --format '{{.Server.Version}}')"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "fleetd needs Python >= 3.11" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
say "installing fleetd into .venv"
.venv/bin/pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
ln -sf "$PWD/.venv/bin/fleetd" /usr/local/bin/fleetd
getent group fleetd >/dev/null || groupadd --system fleetd
say "fleetd $(.venv/bin/fleetd --version | awk '{print $NF}') installed as /usr/local/bin/fleetd"
