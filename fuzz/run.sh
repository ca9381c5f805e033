#!/usr/bin/env bash
# Fuzzes one target for a bounded time on the stable toolchain:
#
#   fuzz/run.sh TARGET SECONDS [extra libFuzzer flags...]
#   fuzz/run.sh all SECONDS            # every target in turn, SECONDS each
#
# New inputs go to fuzz/work/TARGET (not committed); the committed seeds in
# fuzz/corpus/TARGET are read only. A crash is written to fuzz/artifacts/TARGET/ and the
# run fails. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -lt 2 ]; then
  echo "usage: $0 TARGET|all SECONDS [libFuzzer flags...]" >&2
  echo "targets: $(ls fuzz_targets | sed 's/\.rs$//' | tr '\n' ' ')" >&2
  exit 2
fi
target=$1
seconds=$2
shift 2

if [ "$target" = all ]; then
  failed=0
  for t in $(ls fuzz_targets | sed 's/\.rs$//'); do
    "$0" "$t" "$seconds" "$@" || failed=1
  done
  exit "$failed"
fi
if [ ! -f "fuzz_targets/$target.rs" ]; then
  echo "no such target: $target" >&2
  exit 2
fi

mkdir -p "work/$target" "artifacts/$target" logs
# --sanitizer none: the only cargo-fuzz mode that needs no nightly flag (ASan needs
# -Zsanitizer). Overflow checks and debug assertions stay on (cargo-fuzz's default).
set +e
cargo fuzz run --sanitizer none --debug-assertions --codegen-units "${FUZZ_CGU:-16}" ${FUZZ_TARGET_DIR:+--target-dir "$FUZZ_TARGET_DIR"} \
  "$target" "work/$target" "corpus/$target" -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="artifacts/$target/" "$@" 2>&1 | tee "logs/$target.log"
status=${PIPESTATUS[0]}
set -e
# The execution count and coverage, from libFuzzer's final stats.
runs=$(grep -aE '^stat::number_of_executed_units' "logs/$target.log" | awk '{print $2}' || true)
cov=$(grep -aE '#[0-9]+[[:space:]]+DONE' "logs/$target.log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/' || true)
echo "fuzz: $target: ${runs:-?} executions in ${seconds}s, coverage ${cov:-?}, exit $status"
exit "$status"
