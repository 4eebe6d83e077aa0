#!/usr/bin/env bash
# `make fuzz`: installs cargo-fuzz (fuzz/install.sh), then runs each target
# for FUZZ_SECONDS (default 60) from its committed seeds. New inputs go to
# fuzz/work/<target> (ignored by git), so runs build on each other without
# touching fuzz/corpus/. Exits non-zero if any target crashed; the crashing
# input is kept in fuzz/artifacts/<target>/ (see RELIABILITY.md, Fuzzing).
# FUZZ_TARGETS="config" limits the run to some targets.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-decode_requests ids_and_page_tokens config}"
bin="$(fuzz/install.sh)"
export PATH="$bin:$PATH"

failed=()
for target in $targets; do
  mkdir -p "fuzz/work/$target"
  echo "== fuzz $target for ${seconds}s" >&2
  if ! nice -n 5 cargo +nightly fuzz run "$target" "fuzz/work/$target" "fuzz/corpus/$target" \
      -- -max_total_time="$seconds" -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crashes in: $targets" >&2
