#!/usr/bin/env bash
# Submit a JSONL batch, wait for it, and report: exit 0 only if every job succeeded.
#
#   examples/nightly.sh BATCH.jsonl [TIMEOUT_S]
#
# Give every line an "id" that names the day (e.g. "2026-11-22-harbour"): a rerun of the
# same file (cron retrying, or by hand) then queues nothing new and waits for the same
# batch. Set ALICE_SPOOL to the alice-spool command (default: alice-spool on the PATH)
# and ALICE_CONFIG to the config file.
set -euo pipefail
batch_file=${1:?usage: nightly.sh BATCH.jsonl [TIMEOUT_S]}
timeout_s=${2:-14400}
spool=${ALICE_SPOOL:-alice-spool}

batch_id=$($spool submit --batch "$batch_file")
echo "batch $batch_id from $batch_file"
status=0
$spool wait --batch "$batch_id" --timeout "$timeout_s" >/dev/null || status=$?
$spool batch-report "$batch_id" || true
exit "$status"
