#!/usr/bin/env bash
# The GPU part of issue #16 as one prepared command, for a session that is lent a CUDA machine
# (the `device` tool): instillm against TRL in bf16 on CUDA (TRL with flash-attention 2 where the
# package is there, else SDPA), and `serve` under the mixed load, each recorded with the card's name.
#
#   here, once:   benchmarks/gpu_check.sh prepare
#                 → .gpu/ (ignored, ~10 MB): wheels of the packages the device's image lacks, the T0
#                   sample of the training benchmark, and SmolLM2-135M-Instruct's config and tokenizer
#                   (its weights, 98 MB as GGUF, are over what travels: the check trains that
#                   architecture from fresh random weights; a step's time does not depend on them)
#   there:        device run, carry [".gpu"], timeout_s 540, command: bash benchmarks/gpu_check.sh run
#                 → under $OUT: gpu_check.log, packed_attention_cuda.json (one layer: mask, per-example
#                   segments and torch's flash varlen kernel), train_cuda.json (instillm's packed_attention
#                   chosen by short lever runs; TRL's eager configurations), serve_mixed_cuda.json,
#                   train_cuda_trl_compiled.json (all seven, if it ends in time)
#
# The device's Python is 3.12 (PYVER). TRAIN_ARGS and SERVE_ARGS add or override benchmark options;
# PYTHON and DEVICE=cpu run the same steps here (a rehearsal of the imports and the plumbing).
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu
PYVER=${PYVER:-3.12}
# what the image lacks, for the benchmarks' imports (instillm from the source tree, no install)
WHEELS="trl datasets dill multiprocess fastapi starlette pydantic pydantic-core annotated-types typing-inspection
opentelemetry-api uvicorn"

prepare() {
    local src=.cache/smollm2-135m-instruct
    [ -f "$src/config.json" ] || { echo "gpu_check: no $src/config.json: run \`make real-model\` first" >&2; exit 1; }
    rm -rf "$G"
    mkdir -p "$G/whl" "$G/smollm2"
    for f in "$src"/*; do
        case "$(basename "$f")" in *.safetensors | gguf_source.json) ;; *) cp "$f" "$G/smollm2/" ;; esac
    done
    .venv/bin/python benchmarks/train_throughput.py --save-data "$G/t0_sample.jsonl"
    local pins=() p
    for p in $WHEELS; do
        pins+=("$p==$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
    done
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$G/whl" "${pins[@]}"
    du -sh "$G"
}

run() {
    local out=${OUT:-$G/out} py=${PYTHON:-python3} dev=${DEVICE:-cuda}
    compgen -G "$G/whl/*.whl" >/dev/null && [ -f "$G/t0_sample.jsonl" ] ||
        { echo "gpu_check: no $G/ here: run \`benchmarks/gpu_check.sh prepare\` first, and carry .gpu" >&2; exit 1; }
    mkdir -p "$out"
    exec > >(tee "$out/gpu_check.log") 2>&1
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$G"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$py" - <<'PY'
import importlib, sys
sys.path.insert(0, "benchmarks")
for mod in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "fastapi", "uvicorn"):
    m = importlib.import_module(mod)
    print(mod, getattr(m, "__version__", "?"))
for mod in ("instillm.cli", "instillm.train.loop", "instillm.serve.app", "train_throughput", "serve_load"):
    importlib.import_module(mod)
import torch
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
    # instillm eager (--no-compile: its compile lever would not fit the time)
    local train=(--model "$G/smollm2" --random-weights --data "$G/t0_sample.jsonl" --device "$dev" --warmup 1 --steps 4
        --seqs 64 --packed-attention best --no-compile)
    # most telling first: a run cut off by its timeout writes nothing, so TRL's compiled runs come last
    timeout 45 "$py" benchmarks/packed_attention.py --device "$dev" --heads 9 --kv-heads 3 --tokens 10000 \
        --data "$G/t0_sample.jsonl" --out "$out/packed_attention_cuda.json" ||
        echo "gpu_check: the attention benchmark failed or ran out of time (rc $?)"
    # shellcheck disable=SC2086
    timeout 240 "$py" benchmarks/train_throughput.py "${train[@]}" --no-trl-compile --out "$out/train_cuda.json" \
        ${TRAIN_ARGS:-} || echo "gpu_check: the training benchmark failed or ran out of time (rc $?)"
    # shellcheck disable=SC2086
    timeout 140 "$py" benchmarks/serve_load.py --mixed --priority-rows 1 --device "$dev" \
        --out "$out/serve_mixed_cuda.json" ${SERVE_ARGS:-} || echo "gpu_check: the serve benchmark failed (rc $?)"
    # shellcheck disable=SC2086
    timeout 100 "$py" benchmarks/train_throughput.py "${train[@]}" --out "$out/train_cuda_trl_compiled.json" \
        ${TRAIN_ARGS:-} || echo "gpu_check: the run with TRL's compiled configurations failed or ran out of time (rc $?)"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*) echo "usage: benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
