#!/usr/bin/env bash
# Installs cargo-fuzz, pinned, once per version into the user cache (a build
# takes minutes) and prints the directory holding the binary. Idempotent:
# a second run finds the binary and does nothing. `make fuzz` calls it.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.1
root="${XDG_CACHE_HOME:-$HOME/.cache}/user-service/cargo-fuzz-$CARGO_FUZZ_VERSION"

if [ ! -x "$root/bin/cargo-fuzz" ] || [ "$(cat "$root/.version" 2>/dev/null)" != "$CARGO_FUZZ_VERSION" ]; then
  echo "fuzz/install.sh: cargo install cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  nice -n 5 cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$root" >&2
  echo "$CARGO_FUZZ_VERSION" >"$root/.version"
fi

# The nightly toolchain runs the targets (-Z sanitizer flags).
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/install.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 1
fi

echo "$root/bin"
