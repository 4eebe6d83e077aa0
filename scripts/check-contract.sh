#!/usr/bin/env bash
# The contract's checks: `buf lint` (buf.yaml) and `buf breaking` against
# the last released user.v1 (proto/released/user-v1.binpb), then proof that
# the breaking check bites: a copy of proto/ with one field renumbered must
# be refused. A deliberate break belongs in a new package (user.v2).
#
# Releasing a new contract version: `make proto-release` rewrites the
# baseline from proto/ (commit it with the release).
set -euo pipefail
cd "$(dirname "$0")/.."
buf=$(realpath "${BUF:-.tools/bin/buf}")
baseline=$PWD/proto/released/user-v1.binpb

echo "buf lint"
"$buf" lint

echo "buf breaking against proto/released/user-v1.binpb"
"$buf" breaking --against "$baseline"

echo "buf breaking refuses a renumbered field"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r proto buf.yaml "$scratch"/
# User.email = 2 becomes 12: same name, different wire number.
sed -i 's/^  string email = 2;$/  string email = 12;/' "$scratch"/proto/user/v1/user_service.proto
if cmp -s proto/user/v1/user_service.proto "$scratch"/proto/user/v1/user_service.proto; then
  echo "the renumbering edit no longer applies: update this script" >&2
  exit 1
fi
if (cd "$scratch" && "$buf" breaking --against "$baseline") >"$scratch/out" 2>&1; then
  echo "buf breaking accepted a renumbered field" >&2
  exit 1
fi
grep -q 'email' "$scratch/out" || { cat "$scratch/out" >&2; exit 1; }
echo "contract checks passed"
