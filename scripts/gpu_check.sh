#!/usr/bin/env bash
# The checks CI cannot run (it has no GPU), in one script for a GPU machine:
#   1. `openlam bench train` at LAPA full size: bf16 + torch.compile (the MFU target), bf16 eager,
#      and eager at a larger batch; sections land in docs/benchmarks.md.
#   2. a stage-1 run through the real CLI on CUDA with bf16 + compile, stopped half-way and resumed.
#   3. the same through torchrun (NCCL process group, one rank).
#   4. the CycleMimic and Motion-Focused tiny presets (extra decoder passes, a second optimiser).
#   5. policies: stage 2 on actions (flow head, bf16 + compile) stopped half-way and resumed, then
#      stage 3 from it with the bins head and the frozen perception encoder (on the synthetic goal task).
# Usage: OUT=runs/gpu_check bash scripts/gpu_check.sh   (PY picks the interpreter, default python3;
#        SECTIONS picks among "bench train objectives", default all three; PRESETS narrows the last)
# Logs go to OUT; data and runs to WORK (default /tmp/openlam_gpu_check), so OUT stays a few files.
# About 6 min on an H200, most of it compiling.
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-400}
WORK=${WORK:-/tmp/openlam_gpu_check}
SECTIONS=${SECTIONS:-bench train objectives policy}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src
ok() { echo "== $1: $([ "$2" = 0 ] && echo ok || echo "FAILED (rc $2)")" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

if [ "$DEVICE" = cuda ] && has bench; then
  $PY -m openlam bench train configs/bench/lapa_gpu.yaml --steps 30 2>&1 | tee -a "$OUT/bench.log"; ok "bench bf16 compile" $?
  $PY -m openlam bench train configs/bench/lapa_gpu.yaml --steps 30 compile=false 2>&1 | tee -a "$OUT/bench.log"; ok "bench bf16 eager" $?
  $PY -m openlam bench train configs/bench/lapa_gpu.yaml --steps 20 compile=false batch_size=256 2>&1 | tee -a "$OUT/bench.log"; ok "bench bf16 eager b256" $?
fi

DATA=$WORK/squares
$PY - "$DATA" <<'PY' 2>&1 | tee -a "$OUT/train.log"
import sys
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
write_lerobot(sys.argv[1], moving_squares(episodes=48, length=40, size=64, seed=0), fps=10.0)
print("wrote", sys.argv[1])
PY
ok "synthetic dataset" $?

TRAIN=(configs/lapa_tiny.yaml "data.dataset=$DATA" data.workers=4 "device=$DEVICE" log_every=25 preview_every=0
       ckpt_every=$((STEPS / 4)) probe_every=$((STEPS / 2)) time_limit_s=0 batch_size=64)
[ "$DEVICE" = cuda ] && TRAIN+=(precision=bf16 compile=true)
if has train; then
  $PY -m openlam train "${TRAIN[@]}" "out=$WORK/run" steps=$((STEPS / 2)) 2>&1 | tee -a "$OUT/train.log"; ok "train first half" $?
  $PY -m openlam train --resume "${TRAIN[@]}" "out=$WORK/run" steps=$STEPS 2>&1 | tee -a "$OUT/train.log"; ok "train resumed" $?
  $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m openlam train "${TRAIN[@]}" "out=$WORK/ddp" steps=$((STEPS / 2)) compile=false \
    2>&1 | tee -a "$OUT/train.log"; ok "torchrun (1 rank)" $?
fi
# the objectives with extra decoder passes and their own optimiser step, compiled
# (the cycle and its GAN loss start at step 250 in the preset: here early enough to run for most steps)
CYCLE_ON=("objectives.1.options.start=$((STEPS / 8))" "objectives.1.options.adversarial_start=$((STEPS / 8))")
for preset in ${PRESETS:-$(has objectives && echo cyclemimic_tiny motion_focused_tiny)}; do
  extra=(); [ "$preset" = cyclemimic_tiny ] && extra=("${CYCLE_ON[@]}")
  $PY -m openlam train "configs/$preset.yaml" "${extra[@]}" "data.dataset=$DATA" data.workers=4 "device=$DEVICE" log_every=25 preview_every=0 \
    ckpt_every=$STEPS time_limit_s=0 batch_size=64 "out=$WORK/$preset" steps=$((STEPS / 2)) \
    $([ "$DEVICE" = cuda ] && echo precision=bf16 compile=true) 2>&1 | tee -a "$OUT/train.log"; ok "train $preset" $?
done
if has policy; then
  GOALS=$WORK/goals
  $PY - "$GOALS" <<'PY' 2>&1 | tee -a "$OUT/policy.log"
import sys
from openlam.data.cache import CacheConfig, build_cache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import goal_squares
build_cache(write_lerobot(sys.argv[1] + "/ds", goal_squares(episodes_per_task=40, length=24, size=64), fps=10.0),
            sys.argv[1] + "/cache", CacheConfig(size=64))
print("cached", sys.argv[1])
PY
  POL=(configs/policy_tiny.yaml "data.cache=$GOALS/cache" "data.views=[cam]" "device=$DEVICE" log_every=25 batch_size=128 ckpt_every=$((STEPS / 2)))
  [ "$DEVICE" = cuda ] && POL+=(precision=bf16 compile=true)
  $PY -m openlam pretrain "${POL[@]}" head.kind=flow "out=$WORK/pre" steps=$((STEPS / 2)) 2>&1 | tee -a "$OUT/policy.log"; ok "pretrain first half" $?
  $PY -m openlam pretrain --resume "${POL[@]}" head.kind=flow "out=$WORK/pre" steps=$STEPS 2>&1 | tee -a "$OUT/policy.log"; ok "pretrain resumed" $?
  $PY -m openlam finetune "${POL[@]}" head.kind=bins head.perception=true "init=$WORK/pre" data.episodes_per_task=5 \
    "out=$WORK/ft" steps=$((STEPS / 2)) 2>&1 | tee -a "$OUT/policy.log"; ok "finetune from it" $?
fi
cp docs/benchmarks.md "$OUT/benchmarks.md" 2>/dev/null
cat "$OUT/summary.txt"
