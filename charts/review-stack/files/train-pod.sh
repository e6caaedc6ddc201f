set -u
marker="${TRAIN_EXIT_MARKER:-/tmp/reviewstack-train-exit-2}"
rm -f "$marker"
command="${TRAIN_COMMAND:-reviewstack-train}"
if [ "${NNODES:-1}" -gt 1 ] || [ "${NPROC_PER_NODE:-1}" -gt 1 ]; then
  if [ "${NNODES:-1}" -gt 1 ]; then
    rdzv="--nnodes=$NNODES --node-rank=${JOB_COMPLETION_INDEX:-0}"
    rdzv="$rdzv --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT"
  else
    rdzv="--standalone"
  fi
  torchrun $rdzv --nproc-per-node="${NPROC_PER_NODE:-1}" \
    --shutdown-timeout="${TORCHRUN_SHUTDOWN_TIMEOUT:-30}" --no-python \
    sh -c 'm="$1"; shift; "$@"; rc=$?; if [ "$rc" -eq 2 ]; then : > "$m"; fi; exit "$rc"' \
    worker "$marker" "$command" "$@" &
else
  "$command" "$@" &
fi
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
if [ "$rc" -ne 0 ] && [ -f "$marker" ]; then
  rc=2
fi
exit "$rc"
