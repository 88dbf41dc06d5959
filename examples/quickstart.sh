#!/usr/bin/env bash
# Quick start: build the library, start the supervisor simulator on a free
# port, and run the C example examples/c/device_status.c against it.
#   bash examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
cargo build --release --quiet --example simulator
cc -std=c99 -Wall -Wextra -Iinclude examples/c/device_status.c \
   -Ltarget/release -lbalena_device -Wl,-rpath,"$PWD/target/release" \
   -o target/release/device_status

exports=$(mktemp)
target/release/examples/simulator --port 0 --key quickstart0key --app-id 1234 --quiet \
    >"$exports" 2>/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null || true; rm -f "$exports"' EXIT
for _ in $(seq 100); do
    grep -q BALENA_APP_ID "$exports" && break
    sleep 0.05
done
cat "$exports"
# shellcheck disable=SC1090
. "$exports"
echo "\$ target/release/device_status"
target/release/device_status

# Make the simulator hold an update lock, then ask for a reboot.
python3 -c 'import os, urllib.request as u; u.urlopen(u.Request(os.environ["BALENA_SUPERVISOR_ADDRESS"] + "/_sim/state", data=b"{\"locked\":true}", method="POST")).read()'
echo
echo "\$ target/release/device_status --reboot      # while an update lock is held"
target/release/device_status --reboot >/dev/null || echo "(exit status $?)"
