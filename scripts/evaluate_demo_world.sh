#!/usr/bin/env bash
# The paper's evaluation chain (scripts/generate.py -> scripts/evaluate.py) on the bundled demo model, where Inception
# means nothing: Frechet distance in the demo CLIP's image-embedding space, against the shapes world's own drawings of
# the same captions. Two groups of two-object captions (seen in training, held out), 16 candidates each, every
# candidate kept so that one generation gives both N=1 (candidate 0) and the CLIP-reranked best of 16 (rank 0); blur
# radii 0-2 at 64x64 pixels (the paper's 0-8 at 256, scaled). The floor: the same captions drawn twice by the renderer.
#
#   bash scripts/evaluate_demo_world.sh [RUN_DIR]     (default runs/demo_eval; PYTHON, CAPTIONS, LAUNCH to change)
#
# Results: RUN_DIR/{seen,held_out}/eval_{first,best}/evaluation.md, RUN_DIR/floor_{seen,held_out}/evaluation.md and
# RUN_DIR/summary.md (the table of the README's "Evaluate" section, with the pixel judge's accuracy of the same
# images).
set -euo pipefail
RUN=${1:-runs/demo_eval}
PYTHON=${PYTHON:-python}
CAPTIONS=${CAPTIONS:-200}            # captions per group
LAUNCH=${LAUNCH:-$PYTHON}            # e.g. LAUNCH="accelerate launch --num_processes 2"
MODEL=$($PYTHON -c "import hf_dalle; print(hf_dalle.DEMO_MODEL_DIR)")
mkdir -p "$RUN"
EVAL_ARGS=(--reference_shapes --resolution 64 --blur_radii 0 0.5 1 2 --features clip --features_model "$MODEL"
           --clip_score_model "$MODEL")

$PYTHON - "$RUN" "$CAPTIONS" <<'EOF'
import random, sys
from hf_dalle.data import split_captions
run, n = sys.argv[1], int(sys.argv[2])
for group, split in (("seen", "train"), ("held_out", "held_out")):
    captions = sorted(random.Random(0).sample(split_captions(split, num_objects=2), n))
    open(f"{run}/{group}.txt", "w").write("\n".join(captions) + "\n")
EOF

for group in seen held_out; do
  $LAUNCH scripts/generate.py --model "$MODEL" --captions "$RUN/$group.txt" --num_candidates 16 \
    --num_images_per_prompt 16 --candidate_batch_size 64 --seed 0 --output_dir "$RUN/$group"
  for select in first best; do
    $PYTHON scripts/evaluate.py --generated_dir "$RUN/$group" --select $select "${EVAL_ARGS[@]}" \
      --output_dir "$RUN/$group/eval_$select"
  done
  # The floor: a second drawing of each caption (other seeds) in generate.py's layout, scored the same way.
  $PYTHON - "$RUN/$group.txt" "$RUN/drawings_$group" <<'EOF'
import json, sys
from pathlib import Path
from hf_dalle.data import render_caption
captions, out = Path(sys.argv[1]).read_text().split("\n")[:-1], Path(sys.argv[2])
(out / "images").mkdir(parents=True, exist_ok=True)
with open(out / "manifest.jsonl", "w") as manifest:
    for i, caption in enumerate(captions):
        render_caption(caption, seed=100_000 + i, image_size=64).save(out / "images" / f"{i:06d}_0.png")
        entry = {"caption_index": i, "caption": caption, "rank": 0, "candidate": 0, "file": f"images/{i:06d}_0.png"}
        manifest.write(json.dumps(entry) + "\n")
EOF
  $PYTHON scripts/evaluate.py --generated_dir "$RUN/drawings_$group" "${EVAL_ARGS[@]}" \
    --output_dir "$RUN/floor_$group"
done

$PYTHON - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
from PIL import Image
from hf_dalle.data import judge_image
sys.path.insert(0, "scripts")
from evaluate import read_manifest
run = Path(sys.argv[1])
rows = [("seen", "drawn again (floor)", "floor_seen"), ("seen", "N=1", "seen/eval_first"),
        ("seen", "best of 16", "seen/eval_best"), ("held out", "drawn again (floor)", "floor_held_out"),
        ("held out", "N=1", "held_out/eval_first"), ("held out", "best of 16", "held_out/eval_best")]
first = json.loads((run / rows[0][2] / "evaluation.json").read_text())["results"]
radii = [r["blur_radius"] for r in first["per_blur_radius"]]
lines = ["| captions | images | " + " | ".join(f"FD, blur {r:g}" for r in radii) + " | CLIP score | judge |",
         "|---|---|" + "---|" * len(radii) + "---|---|"]
for group, images, folder in rows:
    report = json.loads((run / folder / "evaluation.json").read_text())
    results, generated = report["results"], Path(report["evaluation"]["generated_dir"])
    entries = read_manifest(generated, report["evaluation"]["select"])
    judged = [judge_image(Image.open(generated / e["file"]), e["caption"]).correct for e in entries]
    cells = [f"{r['fid']:.4f}" for r in results["per_blur_radius"]] + [f"{results['clip_score']:.2f}"]
    cells.append(f"{100 * sum(judged) / len(judged):.1f}%")
    lines.append(f"| {group} ({results['num_generated_images']}) | {images} | " + " | ".join(cells) + " |")
(run / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
