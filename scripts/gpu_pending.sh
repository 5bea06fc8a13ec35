#!/usr/bin/env bash
# The open issues' GPU measurements, in the order they are worth device time, each part bounded so that a few of
# them fit one 10-minute command on a lent machine. A part cut at its limit gets Ctrl-C (the tuner then stores what
# it finished) and the next part still runs; every log and CSV goes to OUT_DIR.
#
#   [PACK=results.tgz] bash scripts/gpu_pending.sh OUT_DIR PART...
#
# PACK: after every step, OUT_DIR is archived into that file (replaced whole): a lent machine hands back at most 8
# files of $OUT, and a command it cuts at its limit keeps the archive of the steps before. So, on one:
#   PACK=$OUT/results.tgz bash scripts/gpu_pending.sh /tmp/pending tune throughput
#
# tune, peers (its nvc_tune peer runs the tuner) and decode (tests/conftest.py imports sqlalchemy) need the [tune]
# extra (optuna, sqlalchemy, alembic); on a GPU image without them, install their
# wheels first (shared/tools/gpu-wheels.sh downloads a set for Python 3.12) and put them on PYTHONPATH.
#
# Parts (seconds on one H200, predicted; docs/PERF_NOTES.md says what each should show):
#   tune        the whole llama-7b tune from a fresh database (issue 16: <= 180), its table exported fresh and
#               merged into the GPU's shipped table where one exists, `nvc show`                  (limit 300)
#   throughput  bench.py cold, then benchmarks/timeline.py (issue 21)                            (limit 100 + 150)
#   order       scripts/exp_decode_order.py: decode batches longest first vs arrival order (issue 21) (limit 150)
#   attention   benchmarks/bench_attention.py with the tune's table (issue 17; after `tune`)      (limit 110)
#   decode      batch-1 llama-7b decode against the weight-read floor, the graph and decode GPU tests (limit 320)
#   peers       benchmarks/bench_peers_search.py (issue 16, item 5)                              (limit 555)
#   heuristic   benchmarks/bench_heuristic.py, the learned fallback held out (issue 16, item 3)  (limit 200)
#   gemv        scripts/exp_gemv_tiles.py, the GEMV tiles at decode sizes (issue 16, item 2)     (limit 200)
#   repro-P     benchmarks/reproduce.py --part P (decode, throughput, grid-llama-7b, ...; issue 20), into
#               OUT_DIR/reproduce, run RUN (default 1); COMMIT names the tree's commit where it is no git
#               checkout (a lent machine's copy); one part a command                              (limit 570)
set -u
[ $# -ge 2 ] || { echo "usage: scripts/gpu_pending.sh OUT_DIR PART... (parts: tune throughput order attention decode peers heuristic gemv repro-P)"; exit 2; }
command -v nvidia-smi >/dev/null || { echo "gpu_pending.sh: needs an NVIDIA GPU (no nvidia-smi)"; exit 1; }
# Absolute before the cd below, so that a relative OUT_DIR is the caller's folder, not one inside the repository.
mkdir -p "$1" && out=$(cd "$1" && pwd) || exit 1
shift
if [ -n "${PACK:-}" ]; then  # absolute too, and outside OUT_DIR (else each archive would hold the one before)
  mkdir -p "$(dirname "$PACK")" && PACK=$(cd "$(dirname "$PACK")" && pwd)/$(basename "$PACK") || exit 1
  case "$PACK" in "$out"/*) echo "gpu_pending.sh: PACK $PACK: expected a file outside OUT_DIR $out"; exit 2 ;; esac
fi
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
case "$name" in *H200*) gpu=h200 ;; *H100*) gpu=h100 ;; *A100*) gpu=a100 ;; *) gpu=$(echo "$name" | tr 'A-Z ' 'a-z-') ;; esac
db="sqlite:///$out/tune_llama-7b_$gpu.db"
start=$(date +%s)

# step LIMIT LOG COMMAND...: runs COMMAND, its output appended to LOG, Ctrl-C at LIMIT seconds (and a kill 15 s later).
step() {
  local limit=$1 log=$2; shift 2
  echo "=== [$(( $(date +%s) - start )) s] $* (limit ${limit} s)" | tee -a "$log"
  timeout -s INT -k 15 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== [$(( $(date +%s) - start )) s] exit $rc" | tee -a "$log"
  if [ -n "${PACK:-}" ]; then
    tar -C "$(dirname "$out")" -czf "$PACK.partial" "$(basename "$out")" && mv "$PACK.partial" "$PACK"
  fi
}

for part in "$@"; do
  log="$out/$part.log"
  case "$part" in
    tune)
      step 300 "$log" bash -c "time python3 cli.py tune --gpu $gpu --shapes llama-7b --storage $db"
      step 30 "$log" python3 cli.py export-table --gpu "$gpu" --storage "$db" --out "$out/fresh_$gpu.json"
      if [ -f "tables/$gpu.json" ]; then  # the shipped table of this GPU, with the fresh buckets merged in
        cp "tables/$gpu.json" "$out/merged_$gpu.json"
        step 30 "$log" python3 cli.py export-table --gpu "$gpu" --storage "$db" --out "$out/merged_$gpu.json" --merge
      fi
      step 30 "$log" python3 cli.py show --storage "$db" ;;
    throughput)
      step 100 "$log" python3 bench.py
      step 150 "$log" python3 benchmarks/timeline.py --out "$out/timeline" ;;
    order) step 150 "$log" python3 scripts/exp_decode_order.py --pairs 2 --output "$out/decode_order.csv" ;;
    attention)
      step 110 "$log" python3 benchmarks/bench_attention.py --table "$out/fresh_$gpu.json" \
        --output "$out/bench_attention_$gpu.csv" ;;
    decode)
      step 170 "$log" python3 bench.py --shape llama-7b --decode_latency --repeats 5
      step 150 "$log" python3 -m pytest -q -p no:cacheprovider -m gpu tests/nanovllm/test_cuda_graph.py \
        tests/nanovllm/test_gpu_decode.py ;;
    peers) step 555 "$log" python3 benchmarks/bench_peers_search.py --out "$out" ;;
    heuristic) step 200 "$log" python3 benchmarks/bench_heuristic.py --table tables/h200.json --out "$out" ;;
    gemv) OUT="$out" step 200 "$log" python3 scripts/exp_gemv_tiles.py ;;
    repro-*) step 570 "$log" python3 benchmarks/reproduce.py --part "${part#repro-}" --run "${RUN:-1}" \
      --out "$out/reproduce" ${COMMIT:+--commit "$COMMIT"} ;;
    *) echo "gpu_pending.sh: unknown part '$part' (expected tune, throughput, order, attention, decode, peers, heuristic, gemv, repro-P)"
       exit 2 ;;
  esac
done
