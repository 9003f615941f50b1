# Sourced by .ci/run and scripts/bench.sh: `timed NAME COMMAND...` runs one part and records its time with the load
# beside it (the machines are shared, so a time means little without it); on exit, pass or fail, every recorded
# part is printed with the CPU. Set TIMED_BY (the caller's name, for the log lines) before sourcing.
TIMED_START=$SECONDS
TIMED_PARTS=()

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

timed() {
  local name=$1 t=$SECONDS
  shift
  echo "$TIMED_BY: $name starts (load $(loadavg))"
  "$@"
  TIMED_PARTS+=("$(printf '%-24s %5d s   load %s' "$name" $((SECONDS - t)) "$(loadavg)")")
  echo "$TIMED_BY: $name took $((SECONDS - t)) s"
}

timing_report() {
  echo "$TIMED_BY: times on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores" \
    "(load: 1, 5, 15 min averages at the part's end):"
  [ ${#TIMED_PARTS[@]} -eq 0 ] || printf "$TIMED_BY:   %s\n" "${TIMED_PARTS[@]}"
  echo "$TIMED_BY: total $((SECONDS - TIMED_START)) s"
}
trap timing_report EXIT
