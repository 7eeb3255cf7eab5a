#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; not part of CI), growing the
# corpus under fuzz/corpus/<target>; `tests/fuzz_corpus.rs` replays that corpus in the ordinary
# test run. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#   fuzz/run.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
for target in frames records handshake admin_request; do
  mkdir -p "corpus/$target"
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=4096
  # Keep the corpus small: only inputs that add coverage.
  cargo +nightly fuzz cmin "$target" "corpus/$target"
done
