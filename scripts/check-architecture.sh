#!/usr/bin/env bash
# The dependency rules ARCHITECTURE.md states, checked instead of hoped for:
#   - the client crate builds without the server: no user-service, sqlx,
#     argon2, axum or OpenTelemetry in its normal dependency tree;
#   - the api crate is the contract only (tonic/prost and nothing else of ours);
#   - domain/ imports no wire, transport or database crate, and no adapter
#     module of this crate (grpc, store, auth, telemetry, server, ...): the
#     storage port lives in domain/ports.rs and store/ implements it.
set -euo pipefail
cd "$(dirname "$0")/.."
failed=0
fail() { echo "ARCHITECTURE: $*" >&2; failed=1; }

deps() { cargo tree --locked --offline -p "$1" -e normal --prefix none | awk '{print $1}' | sort -u; }

echo "client crate's dependency tree"
forbidden='^(user-service|sqlx|sqlx-.*|argon2|axum|opentelemetry.*|tracing-opentelemetry|metrics-exporter-prometheus|jsonwebtoken)$'
if bad=$(deps user-service-client | grep -E "$forbidden"); then
  fail "user-service-client depends on: $(echo $bad)"
fi
echo "api crate's dependency tree"
if bad=$(deps user-service-api | grep -E "^user-service(-client)?$|$forbidden"); then
  fail "user-service-api depends on: $(echo $bad)"
fi

echo "domain/ imports"
# Code before each file's `#[cfg(test)]` (unit tests may use a real store),
# comment lines skipped; printed as file:line: text.
domain_code() {
  for f in $(find src/domain -name '*.rs' | sort); do
    awk -v f="$f" '/^#\[cfg\(test\)\]/ {exit} !/^[[:space:]]*\/\// {print f ":" NR ": " $0}' "$f"
  done
}
if bad=$(domain_code | grep -E '\b(tonic|prost|prost_types|sqlx|axum|jsonwebtoken|opentelemetry)::'); then
  fail "domain/ uses a wire/transport/database crate:"$'\n'"$bad"
fi
if bad=$(domain_code | grep -E '\bcrate::(pb|grpc|store|auth|telemetry|server|admin|health|tls)\b'); then
  fail "domain/ uses an adapter module:"$'\n'"$bad"
fi

[ "$failed" = 0 ] && echo "architecture checks passed"
exit "$failed"
