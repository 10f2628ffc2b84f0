#!/usr/bin/env bash
# One command from a fresh Debian machine to a finished demo campaign:
# installs what is missing, builds, starts Redis + PostgreSQL under .local/,
# applies migrations, starts the three daemons with simulated devices, loads
# 10,000 leads over 100 devices (sub-second random delays), and shows a live
# progress bar until the campaign finishes. Options:
#   --leads N --devices D --min-delay S --max-delay S --senders K --keep --sequence
# --keep leaves the stack running (deploy/stack.sh down stops it).
# --sequence runs a 3-step drip sequence (steps 2 s apart) over the leads
# instead of a campaign, and shows its progress (wacast-ctl sequences).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
leads=10000 devices=100 min=0.1 max=0.5 senders=2 keep=0 sequence=
while [ $# -gt 0 ]; do
  case "$1" in
    --leads) leads=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --min-delay) min=$2; shift 2 ;;
    --max-delay) max=$2; shift 2 ;;
    --senders) senders=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --sequence) sequence=--sequence; shift ;;
    *) echo "demo: unknown option $1" >&2; exit 2 ;;
  esac
done
bash deploy/install-deps.sh
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j"$(nproc)" >/dev/null
export WACAST_SENDERS=$senders
bash deploy/stack.sh up
eval "$(bash deploy/stack.sh env)"
[ "$keep" = 1 ] || trap 'bash deploy/stack.sh down' EXIT
echo "demo: $leads leads over $devices simulated devices, delays ${min}-${max}s, $senders sender(s)"
id=$("$root/build/wacast-ctl" demo-seed --leads "$leads" --devices "$devices" --min-delay "$min" --max-delay "$max" $sequence)
if [ -n "$sequence" ]; then
  echo "demo: sequence $id"
  "$root/build/wacast-ctl" watch-sequence "$id" 3600
  "$root/build/wacast-ctl" sequences
else
  echo "demo: campaign $id"
  "$root/build/wacast-ctl" watch "$id" 3600
fi
