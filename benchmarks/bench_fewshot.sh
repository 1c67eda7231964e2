#!/usr/bin/env bash
# Prompt learning on ShapesWorld, from nothing. Objects of ShapesWorld scenes are cut out (their box plus a margin,
# resized to 32x32) so that one object fills each image: clip-tiny is pretrained briefly on the crops of one world
# with captions "a large red star.", and the crops of another world (another seed: images pretraining never saw)
# are sorted into one class folder per colour (or per shape: CLASSES=shape; train/ from its train split, test/ from
# val + test). Then vlp eval fewshot: zero-shot vs linear probe vs CoOp (unified, class-specific) vs CLIP-Adapter at 1/2/4/8/16 shots per
# class, the same shots and seed for every method. One run, one seed.
# Usage: benchmarks/bench_fewshot.sh [OUT_DIR] [PRETRAIN_STEPS] [SHOTS] [CLASSES: color (default) or shape]
# Defaults: 40 pretraining steps leave colour half learned (zero-shot ~40%), so the methods have room to differ; at
# 300 steps every method is at ~100% on colour, and up to 1,500 steps (also at patch size 4) shape stays at chance
# for every method, the linear probe included: the image tower has not learned shapes yet.
set -euo pipefail
out=${1:-runs/fewshot}
steps=${2:-40}
shots=${3:-1,2,4,8,16}
classes=${4:-color}
vlp=${VLP:-vlp}
# toy models: one thread each (on a shared 2-core machine two threads per process ran these steps ~6x slower)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
crops() {  # crops WORLD OUT MODE [CLASSES]: manifest = captioned crops of the train split; folder = class folders
    python - "$@" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image

world, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
key = sys.argv[4] if len(sys.argv) > 4 else "shape"
splits = {"train": "train"} if mode == "manifest" else {"train": "train", "val": "test", "test": "test"}
lines, counts = [], {}
for split, target in splits.items():
    coco = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        side = max(w, h) * 1.5  # the box and a margin around it, square
        cx, cy = x + w / 2, y + h / 2
        image = Image.open(world / "images" / split / files[a["image_id"]]).convert("RGB")
        crop = image.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
        crop = crop.resize((32, 32), Image.BICUBIC)
        shape, color, size = names[a["category_id"]], a["attributes"]["color"], a["attributes"]["size"]
        label = color if key == "color" else shape
        folder = out / "images" if mode == "manifest" else out / target / label
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{split}-{a['id']:07d}.png"
        crop.save(folder / name)
        if mode == "manifest":
            captions = [f"a {size} {color} {shape}.", f"a {color} {shape}.", f"a {shape}."]
            lines.append(json.dumps({"image": f"images/{name}", "caption": captions}))
        counts[f"{target}/{label}"] = counts.get(f"{target}/{label}", 0) + 1
if mode == "manifest":
    (out / "manifest_train.jsonl").write_text("\n".join(lines) + "\n")
print(out, dict(sorted(counts.items())))
PY
}
data=$out/data
if [ ! -d "$data/tokenizer" ]; then
    $vlp data synth --out "$data" --images 2000 --size 64 --seed 0 --quiet --overwrite --formats karpathy,coco
    $vlp tokenizer train --input "$data/annotations/dataset_shapes.json" --out "$data/tokenizer" --vocab-size 1000
fi
[ -f "$out/crops/manifest_train.jsonl" ] || crops "$data" "$out/crops" manifest
if [ ! -f "$out/clip/recipe.yaml" ]; then
    $vlp pretrain clip-tiny --out "$out/clip" --overwrite --set data.type=manifest --set data.root="$out/crops" \
        --set model.tokenizer="$data/tokenizer" --set train.steps="$steps" --set optim.lr=2e-3 \
        --set schedule.warmup_steps=$(( steps / 10 < 100 ? steps / 10 + 1 : 100 ))
fi
[ -d "$out/heldout" ] || $vlp data synth --out "$out/heldout" --images 600 --size 64 --seed 1 --formats coco --quiet
[ -d "$out/folder-$classes" ] || crops "$out/heldout" "$out/folder-$classes" folder "$classes"
$vlp eval fewshot --model "$out/clip" --data "$out/folder-$classes" --shots "$shots" --seed 0 \
    --methods zeroshot,probe,coop,coop_csc,adapter --out "$out/eval-$classes"
