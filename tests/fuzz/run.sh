#!/usr/bin/env bash
# Runs the libFuzzer targets one after another and merges what they find into
# the checked-in corpora. Usage: tests/fuzz/run.sh [seconds per target, 600]
# [target...] (targets by corpus name: phone, template, webhook_gowa, ...;
# default: every tests/fuzz/fuzz_*.c). Builds with clang in build-fuzz/
# (-DWACAST_FUZZ=ON). One fuzzer process at a time (-workers=1, no -jobs):
# the machine is shared. New inputs land in a scratch folder first; then
# tests/fuzz/corpus/<name>/ is rebuilt with -merge=1 as the fewest inputs that
# cover what the old corpus and the new inputs cover, so it stays small. A
# crash stops that target; its input is kept in build-fuzz/artifacts/<name>/
# and the run goes on with the next target. A tests/fuzz/fuzz_<name>.dict is
# passed as the target's -dict. Prints one summary line per target at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-600}
shift || true
build=${WACAST_FUZZ_BUILD:-$root/build-fuzz}
fuzz_dir=$root/tests/fuzz

if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for src in "$fuzz_dir"/fuzz_*.c; do
    n=$(basename "$src" .c)
    names+=("${n#fuzz_}")
  done
fi
targets=()
for n in "${names[@]}"; do
  [ -f "$fuzz_dir/fuzz_$n.c" ] || { echo "run.sh: no tests/fuzz/fuzz_$n.c" >&2; exit 2; }
  targets+=("fuzz_$n")
done

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DWACAST_FUZZ=ON >/dev/null
cmake --build "$build" -j2 --target "${targets[@]}"

# Replaces corpus with the smallest set of inputs, from corpus and scratch,
# that reaches every edge any of them reaches (-use_counters=0: hit counts,
# which the fuzzing itself does use, would keep five times as many files).
# Inputs with a name of their own (seed-*, a crash kept as a regression) stay
# whatever they cover; libFuzzer names the others by their SHA-1.
merge_corpus() {
  local bin=$1 max_len=$2 corpus=$3 scratch=$4 min=$5 log=$6
  rm -rf "$min"
  mkdir -p "$min"
  if ! "$bin" -merge=1 -use_counters=0 -rss_limit_mb=2048 -max_len="$max_len" \
    "$min" "$corpus" "$scratch" >"$log" 2>&1; then
    echo "   merge failed, corpus left as it was (see $log)"
    return
  fi
  local f name
  for f in "$corpus"/*; do
    name=$(basename "$f")
    [[ $name =~ ^[0-9a-f]{40}$ ]] && continue
    rm -f "$min/$(sha1sum <"$f" | cut -d' ' -f1)"
    cp "$f" "$min/$name"
  done
  rm -rf "$corpus"
  cp -r "$min" "$corpus"
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary=()
for n in "${names[@]}"; do
  bin=$(find "$build" -name "fuzz_$n" -type f -perm -u+x | head -n1)
  corpus=$fuzz_dir/corpus/$n
  mkdir -p "$corpus"
  # The target's header comment says how long an input may usefully be.
  max_len=$(grep -o 'fuzz-max-len: [0-9]*' "$fuzz_dir/fuzz_$n.c" | grep -o '[0-9]*$' || true)
  max_len=${max_len:-4096}
  # Tokens the target's input is made of, when it has a dictionary.
  dict=()
  [ -f "$fuzz_dir/fuzz_$n.dict" ] && dict=(-dict="$fuzz_dir/fuzz_$n.dict")
  artifacts=$build/artifacts/$n
  scratch=$build/scratch/$n
  log=$build/logs/$n.log
  rm -rf "$scratch"
  mkdir -p "$artifacts" "$scratch" "$(dirname "$log")"
  before=$(find "$corpus" -type f | wc -l)
  touch "$log.start"
  echo "== $n: ${seconds}s, -max_len=$max_len, corpus $before files (log: $log)"
  started=$SECONDS
  set +e
  "$bin" "$scratch" "$corpus" -max_total_time="$seconds" -workers=1 -rss_limit_mb=2048 \
    -max_len="$max_len" -timeout=25 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "${dict[@]}" >"$log" 2>&1
  status=$?
  set -e
  elapsed=$((SECONDS - started))
  tail -n 3 "$log" | sed 's/^/   /'
  merge_corpus "$bin" "$max_len" "$corpus" "$scratch" "$build/min/$n" "$build/logs/$n.merge.log"
  after=$(find "$corpus" -type f | wc -l)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*$' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*$' || true)
  found=$(find "$artifacts" -type f -newer "$log.start")
  crashes=$(grep -c . <<<"$found" || true)
  line="$n: ${elapsed}s runs=${runs:-?} cov=${cov:-?} ft=${ft:-?} corpus=$before->$after crashes=$crashes exit=$status"
  [ "$crashes" -eq 0 ] || line="$line: $(tr '\n' ' ' <<<"$found")"
  summary+=("$line")
  echo "   $line"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
