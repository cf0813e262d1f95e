#!/usr/bin/env bash
# Rebuild the bundled demo model (hf_dalle.DEMO_MODEL_DIR) from nothing: `make train-demo`.
#
# Every stage is one of the package's scripts with fixed seeds; the run folder (RUN_DIR, default runs/demo) keeps each
# stage's output, model card, metrics and validation images. A stage whose output is complete (for the training stages:
# has its model card, written last) is skipped, and the training stages resume from their last checkpoint, so an
# interrupted run continues where it stopped (`rm -rf runs/demo` to start over). The last stages judge the result
# (scripts/evaluate_shapes.py) and install the pipeline with its model card into src/hf_dalle/demo_model
# (scripts/package_demo_model.py).
#
# Budget: under 2 hours (105-113 minutes measured) on a 2-core CPU with bfloat16 matrix units. PYTHON, RUN_DIR and
# DEMO_DIR can be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
RUN=${RUN_DIR:-runs/demo}
DEMO_DIR=${DEMO_DIR:-src/hf_dalle/demo_model}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
COMMON=(--mixed_precision bf16 --seed 0 --logging_steps 100 --checkpointing_steps 500 --checkpoints_total_limit 1
        --resume_from_checkpoint latest)
PROMPTS=("a red circle" "a blue square above a yellow triangle" "a green circle to the left of a orange square"
         "a purple triangle below a red circle" "a red square" "a green triangle to the right of a blue square"
         "a yellow circle to the left of a purple triangle" "a blue circle above a orange triangle")

stage() { echo; echo "== $(date +%H:%M:%S) $*"; }
# timed NAME COMMAND...: run a stage and add its wall time to $RUN/stage_seconds.tsv (for the model card).
timed() {
    local name=$1 start=$SECONDS
    shift
    "$@"
    printf '%s\t%d\n' "$name" $((SECONDS - start)) >> "$RUN/stage_seconds.tsv"
}
mkdir -p "$RUN"

stage "1/8 drawings of the training captions"
[ -d "$RUN/data" ] || timed data $PYTHON scripts/make_shapes_dataset.py --num_samples 100000 --split train --seed 0 \
    --image_size 64 --output_dir "$RUN/data"

stage "2/8 caption tokenizer"
[ -f "$RUN/tokenizer/tokenizer.json" ] || timed tokenizer $PYTHON scripts/train_tokenizer.py --dataset_name "$RUN/data" \
    --vocab_size 320 --max_text_length 12 --output_dir "$RUN/tokenizer"

stage "3/8 CLIP reranker, in the background (log: $RUN/clip.log)"
# CLIP needs only the drawings and the tokenizer, so it trains beside stages 4-6. Two one-thread jobs keep two cores
# busier than one two-thread job does: these models are too small for their matmuls to split well. It trains on the
# pairs, then briefly with every drawing also shown as two hard negatives (another seed: another data order): with a
# few cells swapped in from another drawing, and with one object redrawn as another shape, so that it ranks the
# transformer's typical errors (a few cells drawn wrong; a held-out pairing such as the blue circle drawn as a seen
# blue shape) below a clean drawing.
clip_pid=
if [ ! -f "$RUN/clip/README.md" ]; then
    (
        export OMP_NUM_THREADS=1
        [ -f "$RUN/clip_pairs/README.md" ] || timed CLIP $PYTHON scripts/train_clip.py --dataset_name "$RUN/data" \
            --resolution 64 --tokenizer_name_or_path "$RUN/tokenizer" --max_text_length 16 \
            --model_config '{"text_config": {"num_hidden_layers": 4}, "vision_config": {"num_hidden_layers": 4}}' \
            --train_batch_size 128 --max_train_steps 2500 --learning_rate 5e-4 --lr_warmup_steps 100 \
            --validation_steps 500 --num_validation_pairs 256 "${COMMON[@]}" --output_dir "$RUN/clip_pairs"
        timed "CLIP, hard negatives" $PYTHON scripts/train_clip.py --dataset_name "$RUN/data" --resolution 64 \
            --pretrained_model_name_or_path "$RUN/clip_pairs" --max_text_length 16 --cell_swap_negatives 1.0 \
            --shape_swap_negatives 1.0 \
            --train_batch_size 128 --max_train_steps 400 --learning_rate 2e-4 --lr_warmup_steps 50 \
            --validation_steps 200 --num_validation_pairs 256 "${COMMON[@]}" --seed 1 --output_dir "$RUN/clip"
    ) > "$RUN/clip.log" 2>&1 &
    clip_pid=$!
    export OMP_NUM_THREADS=1
fi

stage "4/8 dVAE"
[ -f "$RUN/vae/README.md" ] || timed dVAE $PYTHON scripts/train_vae.py --dataset_name "$RUN/data" --resolution 64 \
    --model_config '{"hidden_size": 32, "num_blocks_per_group": 1, "vocab_size": 512}' \
    --reconstruction_loss mse --kl_weight_start 0 --kl_weight_end 0 --code_usage_weight 0.01 \
    --temperature_start 1 --temperature_end 0.0625 --max_train_steps 5000 --train_batch_size 32 \
    --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 100 --validation_steps 1000 --shapes_judge \
    --num_validation_images 64 "${COMMON[@]}" --output_dir "$RUN/vae"

stage "5/8 dVAE gate: argmax reconstructions of fresh drawings"
[ -f "$RUN/vae_eval/evaluation.json" ] || timed "dVAE evaluation" $PYTHON scripts/evaluate_shapes.py --vae "$RUN/vae" \
    --output_dir "$RUN/vae_eval"

stage "6/8 pre-tokenize: images -> dVAE codes, captions -> ids"
[ -d "$RUN/tokens" ] || timed pre-tokenization $PYTHON scripts/pretokenize.py --dataset_name "$RUN/data" --vae_model_name_or_path "$RUN/vae" \
    --tokenizer_name_or_path "$RUN/tokenizer" --output_dir "$RUN/tokens"

if [ -n "$clip_pid" ]; then
    stage "waiting for the CLIP reranker"
    timed "waiting for CLIP" wait "$clip_pid"
    unset OMP_NUM_THREADS
fi

stage "7/8 transformer prior"
[ -f "$RUN/pipeline/README.md" ] || timed transformer $PYTHON scripts/train_dalle.py --pretokenized_dataset "$RUN/tokens" \
    --clip_model_name_or_path "$RUN/clip" \
    --model_config '{"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8}' \
    --max_train_steps 6000 --train_batch_size 32 --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 100 \
    --use_ema --ema_decay 0.999 --validation_steps 1000 --validation_guidance_scale 2 --shapes_judge --num_validation_images 8 \
    --validation_prompts "${PROMPTS[@]}" "${COMMON[@]}" --output_dir "$RUN/pipeline"

stage "8/8 evaluation and packaging"
[ -f "$RUN/eval/evaluation.json" ] || timed evaluation $PYTHON scripts/evaluate_shapes.py --model "$RUN/pipeline" \
    --guidance_scale 2 --output_dir "$RUN/eval"
$PYTHON scripts/package_demo_model.py --run_dir "$RUN" --output_dir "$DEMO_DIR"
stage "done: $DEMO_DIR"
