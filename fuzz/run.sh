#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each, one
# after another, at the lowest CPU priority, saving new inputs in
# fuzz/corpus-new/<target>/ (the checked-in corpus/<target>/ is read as
# seeds and not written to; copy what is worth keeping, after `cargo fuzz
# cmin`). A crash stops that target and leaves the reproducer in
# fuzz/artifacts/<target>/. Each run's summary line goes to
# fuzz/runs.log: target, seconds, executions, coverage, corpus size, result.
#
#   fuzz/run.sh [SECONDS] [TARGET...]       (default 60 s, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
}

nice -n 19 cargo +nightly fuzz build --features libfuzzer
mkdir -p fuzz/corpus-new fuzz/logs
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-new/$t" "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    extra=()
    [ -f "fuzz/dict/$t.dict" ] && extra+=("-dict=fuzz/dict/$t.dict")
    # These keep process-wide state (a mailbox store, a runtime), so every
    # input leaves allocations behind and LeakSanitizer would run after
    # each one (26 executions/s instead of hundreds).
    case "$t" in
        final_payload | mailbox_http) extra+=("-detect_leaks=0") ;;
    esac
    echo "== $t for $secs s (log: $log)"
    start=$(date +%s)
    set +e
    nice -n 19 cargo +nightly fuzz run --features libfuzzer "$t" \
        "fuzz/corpus-new/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    wall=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || true)
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || true)
    corp=$(echo "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*' || true)
    if [ "$rc" -eq 0 ]; then result=ok; else result="CRASH (exit $rc, see $log)"; status=1; fi
    line="$(date -u +%FT%TZ) target=$t wall_s=$wall execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?} result=$result"
    echo "$line" | tee -a fuzz/runs.log
done
exit "$status"
