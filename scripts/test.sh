#!/usr/bin/env bash
# Install what the test suite needs, then run it inside a private network namespace
# where only loopback is up, so no test can reach any other address.
# Extra arguments go to pytest (e.g. -m "not slow" to skip browser and load tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v ffprobe >/dev/null || missing+=(ffmpeg)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v ip >/dev/null || missing+=(iproute2)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v turnserver >/dev/null || missing+=(coturn)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
# torch first and pinned: it is a local CPU wheel; an unpinned resolve would pull CUDA builds.
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[test,safety,diffusers]"
# tests/test_packaging.py installs the built wheel into a fresh venv with no network: fetch the runtime
# dependencies (pyproject's [project] dependencies, wheels only, no extras, so no torch) into a local
# wheelhouse now, while the index is reachable. Skipped while the list (and Python) is unchanged.
wheelhouse=.cache/wheelhouse
requirements=$(python -c 'import sys, tomllib
print(f"# python {sys.version_info[0]}.{sys.version_info[1]}")
print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")')
if [ "$(cat "$wheelhouse/requirements.txt" 2>/dev/null)" != "$requirements" ]; then
  mkdir -p "$wheelhouse"
  printf '%s\n' "$requirements" > "$wheelhouse/requirements.in"
  python -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$wheelhouse" -r "$wheelhouse/requirements.in"
  mv "$wheelhouse/requirements.in" "$wheelhouse/requirements.txt"
fi

exec unshare --net -- sh -c 'ip link set lo up && exec python -m pytest "$@"' pytest-in-netns "$@"
