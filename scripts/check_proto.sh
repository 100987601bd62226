#!/usr/bin/env bash
# Fail (exit 1) when serving/proto_gen/ is not what scripts/gen_proto.sh generates from proto/:
# the generated code is committed, so a .proto edit must come with a regeneration.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
bash scripts/gen_proto.sh "$TMP/proto_gen"
if ! diff -r --exclude=__pycache__ "$TMP/proto_gen" serving/proto_gen > "$TMP/diff"; then
    cat "$TMP/diff" >&2
    echo "serving/proto_gen/ is out of date with proto/: run scripts/gen_proto.sh and commit the result" >&2
    exit 1
fi
echo "serving/proto_gen/ matches proto/"
