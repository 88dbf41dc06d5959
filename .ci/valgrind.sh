#!/usr/bin/env bash
# Runs the C API test suite (tests/c/test_api.c) under valgrind memcheck:
# no memory error and no definite leak is allowed, in the C program or in
# libbalena_device.so underneath it.
#
# Design: one test drives the suite in every mode. `c_suite_against_simulator`
# in tests/c_api.rs compiles tests/c/test_api.c against include/balena_device.h
# and target/debug/libbalena_device.so, starts the supervisor simulator
# (tests/sim) in-process on 127.0.0.1, and runs the program with the
# simulator's address, key and app id in its environment. When BD_VALGRIND
# names a valgrind binary, the test runs the program as
#   valgrind --error-exitcode=99 --leak-check=full \
#            --errors-for-leak-kinds=definite --log-file=... test_api
# with the suite's time limits scaled for valgrind's slowness, and asserts
# exit status 0, "N passed, 0 failed", "ERROR SUMMARY: 0 errors" and
# "definitely lost: 0 bytes" in the log. Without BD_VALGRIND (a plain
# `cargo test`) the same test runs the program directly, so it is never a
# no-op and never silently skipped. Possible and still-reachable blocks
# (process-lifetime statics of the Rust runtime and the library) are listed
# in the log but are not errors.
#
# Usage: bash .ci/valgrind.sh   (installs valgrind with apt-get if missing)
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind.sh: installing valgrind"
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends valgrind
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "valgrind.sh: no C compiler (cc) in PATH" >&2
    exit 1
fi
valgrind --version

# The cdylib the suite links against.
cargo build

BD_VALGRIND="$(command -v valgrind)" \
    cargo test --test c_api -- --exact c_suite_against_simulator --nocapture
