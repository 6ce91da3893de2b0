#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation and
# AddressSanitizer on the machine's stable toolchain: what `cargo fuzz build`
# does, without cargo-fuzz or a nightly toolchain. RUSTC_BOOTSTRAP=1 lets
# stable rustc take -Zsanitizer (its rust-std ships the ASan runtime).
# FUZZ_SANITIZER=none builds without ASan (faster, coverage only).
set -euo pipefail
cd "$(dirname "$0")"
triple=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
if [ "${FUZZ_SANITIZER:-address}" = address ]; then
  flags+=" -Zsanitizer=address"
fi
RUSTC_BOOTSTRAP=1 RUSTFLAGS="$flags" \
  cargo build --release --target "$triple" --bins "$@" >&2
echo "$PWD/target/$triple/release"
