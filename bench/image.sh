#!/usr/bin/env bash
# Image preparation, wacast against the tool a user would reach for instead,
# in one run on the same file: a 4,000 x 3,000 photo-like JPEG at quality 95
# (ImageMagick's seeded plasma, so every run uses the same picture).
#   wacast:      wc_image_prepare (decode with DCT scaling, Lanczos-3 to 1,600
#                px, quality searched to <= 350 KB), in-process, N times;
#   ImageMagick: convert IN -resize 1600x1600 -quality Q OUT, N processes,
#                Q = the quality wacast settled on (same output settings).
# ImageMagick writes 4:4:4 chroma at quality >= 90 and has no byte budget,
# so its file can be larger than wacast's at the same Q.
# Prints images per second and CPU per image for each, writes
# bench/results/image-<UTC>.md. Usage: bench/image.sh [N (10)] [--build DIR]
# [--no-build]. No timing is asserted; these are figures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
n=10
build=$root/build-bench
do_build=1
while [ $# -gt 0 ]; do
  case $1 in
  --build) build=$2; shift 2 ;;
  --no-build) do_build=0; shift ;;
  [0-9]*) n=$1; shift ;;
  *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# Debian's ImageMagick 6 binary, not a wrapper that may stand before it on PATH.
convert=$(command -v convert-im6.q16 || command -v convert || true)
if [ -z "$convert" ]; then
  "$root/deploy/install-deps.sh"
  convert=$(command -v convert-im6.q16 || command -v convert)
fi
if [ "$do_build" = 1 ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j2 --target wacast-image-bench >/dev/null
fi
bench_bin=$build/wacast-image-bench
work=$(mktemp -d /tmp/wacast-image-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

src=$work/photo-4000x3000.jpg
"$convert" -seed 42 -size 4000x3000 plasma:fractal -blur 0x1 -quality 95 "$src"
in_bytes=$(stat -c %s "$src")

# Wall and CPU (user + system, children included) of a command run N times.
time_n() {
  local start end t0 t1 me=$BASHPID
  t0=$(awk '{print $14+$15+$16+$17}' "/proc/$me/stat")
  start=$(date +%s.%N)
  for _ in $(seq "$n"); do "$@" >/dev/null; done
  end=$(date +%s.%N)
  t1=$(awk '{print $14+$15+$16+$17}' "/proc/$me/stat")
  local hz
  hz=$(getconf CLK_TCK)
  awk -v s="$start" -v e="$end" -v c0="$t0" -v c1="$t1" -v hz="$hz" -v n="$n" \
    'BEGIN { w = e - s; c = (c1 - c0) / hz; printf "%.2f %.1f %.3f\n", n / w, c * 1000 / n, w }'
}

echo "== wacast: wc_image_prepare x $n"
line=$("$bench_bin" "$src" "$n" "$work/wacast.jpg")
echo "   $line"
w_per_s=$(grep -o 'per_s=[0-9.]*' <<<"$line" | cut -d= -f2)
w_cpu=$(grep -o 'cpu_ms_per_image=[0-9.]*' <<<"$line" | cut -d= -f2)
q=$(grep -o 'quality=[0-9]*' <<<"$line" | cut -d= -f2)
w_out=$(stat -c %s "$work/wacast.jpg")
w_dims=$(grep -o 'out=[0-9x]*' <<<"$line" | cut -d= -f2)

echo "== ImageMagick: convert -resize 1600x1600 -quality $q x $n"
read -r m_per_s m_cpu _ < <(time_n "$convert" "$src" -resize 1600x1600 -quality "$q" "$work/im.jpg")
m_out=$(stat -c %s "$work/im.jpg")
m_dims=$("$convert" "$work/im.jpg" -format '%wx%h' info:)
echo "   per_s=$m_per_s cpu_ms_per_image=$m_cpu out_bytes=$m_out out=$m_dims"

# How close the two results are (PSNR of wacast's output against ImageMagick's).
psnr=$("$convert" "$work/wacast.jpg" "$work/im.jpg" -metric PSNR -compare -format '%[distortion]' info: 2>/dev/null || true)

mkdir -p "$here/results"
out=$here/results/image-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Image preparation, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo
  echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: figures are noisy)."
  echo
  echo "Source: 4,000 x 3,000 JPEG, quality 95, $in_bytes bytes (ImageMagick plasma, seed 42). $n images each."
  echo
  echo "| pipeline | images/s | CPU ms/image | output bytes | output size |"
  echo "|---|---|---|---|---|"
  echo "| wacast wc_image_prepare (in-process; quality searched: $q) | $w_per_s | $w_cpu | $w_out | $w_dims |"
  echo "| ImageMagick \`convert -resize 1600x1600 -quality $q\` (a process each) | $m_per_s | $m_cpu | $m_out | $m_dims |"
  echo
  echo "PSNR of wacast's output against ImageMagick's: ${psnr:-n/a} dB."
  echo "ImageMagick: $("$convert" -version | head -1)"
} >"$out"
echo
cat "$out"
echo
echo "written: $out"
