#!/usr/bin/env bash
# Issue 20's miniature RAGME experiment, end to end, with ragvid's own commands: the 480-clip
# synth corpus → fitted tiny CLIP → near-duplicate groups → train / val split (groups kept on
# one side) → the synth32 base trained from scratch on train → index of train → neighbour
# lists → RAGME adapter on the synth32 base → base vs RagInit only vs RAGME at K = 1 and 5 on
# held-out val captions, scored against the synth world's truth (colour / shape / direction
# accuracy with 95% intervals and chance), FVD / KVD on random3d features, copy similarity.
#
#   bash bench/synth_experiment.sh [workspace]      # ≈ 1.5 h on a 2-core CPU, most of it
#                                                   # the base (skipped when already trained)
# Every step resumes or reuses what a previous run finished. Figures: BENCHMARKS.md.
set -euo pipefail
WS=${1:-synth-experiment-ws}
R=${RAGVID:-ragvid}
ENC=encoder:fit
$R corpus synth --workspace "$WS" --name demo
$R corpus ingest "$WS/raw/demo" --name demo --workspace "$WS"
$R encoder fit --workspace "$WS" --corpus demo --name fit
$R embed --workspace "$WS" --corpus demo --encoder $ENC --engine local
$R index dedup --workspace "$WS" --corpus demo --encoder $ENC
$R corpus split demo --workspace "$WS"
$R model train-base --workspace "$WS" --corpus demo --name synth32
$R index build --workspace "$WS" --corpus demo --encoder $ENC
$R neighbours --workspace "$WS" --index demo --delta-min 0.4
$R train --workspace "$WS" --run synth-ragme --base synth32 --neighbours demo --corpus demo \
  --encoder $ENC --preset synth32 --model-preset synth32
$R evaluate --workspace "$WS" --run synth-experiment --index demo --reference-corpus demo \
  --base synth32 --adapter synth-ragme --methods base,raginit@k=1,raginit,ragme@k=1,ragme \
  --num-prompts 40 --steps 25 --height 32 --width 32 --frames 8 --k 5
