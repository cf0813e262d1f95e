#!/usr/bin/env bash
# The GPU tables of README "Performance" in one command, for a lent GPU machine that has Python, torch and CUDA but
# no network. Here, first: `make device-kit` (the wheels it lacks, into .whl/). Then, through the device tool:
#
#     run(command="bash scripts/device_benchmarks.sh", carry=[".whl"], timeout_s=540)
#
# Phases, most wanted first, each under its own time limit so that one hang leaves the others' results (8 files,
# what the device tool brings back at most):
#   decode12b   one 12B-shaped layer's decode step (eager) against its memory-bandwidth floor
#   generation  benchmark_generation.py in bf16: ours eager, GPT-2, DALLE-pytorch, the matmul floor
#   training    benchmark_training.py in bf16
#   compiled    ours with static cache + torch.compile (CUDA graphs) at batch 32, beside GPT-2 and the floor
#   profile     (not run unless named) the torch.profiler table of ours at the largest grid and batch
# PHASES="compiled profile" reruns some; BENCH_ARGS adds arguments to every benchmark (e.g. "--repeats 3"). Results
# go to $OUT (the device tool's folder that comes back) or, run by hand, to benchmarks/. DEVICE=cpu runs the same on
# a CPU, to check the kit without a GPU, with small BENCH_ARGS such as
# "--grid-sizes 8 --repeats 1 --hidden-size 128 --num-heads 4" (DALLE-pytorch's rotary embedding fails at head size 8).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks}
DEVICE=${DEVICE:-cuda}
PHASES=${PHASES:-decode12b generation training compiled}
BENCH_ARGS=${BENCH_ARGS:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

SITE=/tmp/hf_dalle_site
rm -rf "$SITE" && mkdir -p "$SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "installing .whl/ failed: run 'make device-kit' here and carry .whl"; exit 1; }
# dalle_pytorch imports youtokentome (a C++ extension with no wheel for this Python, and nothing to build it from)
# for a tokenizer these benchmarks never use: they feed it token ids. An empty module satisfies the import.
touch "$SITE/youtokentome.py"
export PYTHONPATH="$PWD/src:$SITE" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PYTHON" -c "import torch, transformers, diffusers, dalle_pytorch, dall_e, hf_dalle
print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" || exit 1

phase() {  # phase NAME SECONDS COMMAND...: run COMMAND if NAME is in PHASES, killed after SECONDS
    local name=$1 seconds=$2; shift 2
    [[ " $PHASES " == *" $name "* ]] || return 0
    echo "== $name (at most ${seconds}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$seconds" "$@"
    echo "== $name: exit $? after $((SECONDS - start))s"
}
common=(--device "$DEVICE" --dtype bf16)
generation=("$PYTHON" scripts/benchmark_generation.py "${common[@]}")
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
phase decode12b 60 "${generation[@]}" --decode-step-12b-only --no-compile $BENCH_ARGS \
    --output "$OUT/decode_step_12b_$DEVICE"
# shellcheck disable=SC2086
phase generation 200 "${generation[@]}" --no-compile --no-decode-step-12b $BENCH_ARGS \
    --output "$OUT/generation_$DEVICE"
# shellcheck disable=SC2086
phase training 60 "$PYTHON" scripts/benchmark_training.py "${common[@]}" $BENCH_ARGS --output "$OUT/training_$DEVICE"
# shellcheck disable=SC2086
phase compiled 150 "${generation[@]}" --batch-sizes 32 --no-reference --no-decode-step-12b $BENCH_ARGS \
    --output "$OUT/generation_${DEVICE}_compiled"
# shellcheck disable=SC2086
phase profile 120 "${generation[@]}" --batch-sizes 32 --no-compile --no-reference --no-decode-step-12b --profile \
    --no-memory $BENCH_ARGS --output "$OUT/profile_$DEVICE"
