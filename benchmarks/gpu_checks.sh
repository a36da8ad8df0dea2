#!/usr/bin/env bash
# The GPU checks recorded in benchmarks/RESULTS-ARCHIVE.md, on a machine with one NVIDIA GPU and jax[cuda], torch
# (CUDA build) and transformers installed. Usage:
#
#     RLAE_FIXTURES=../shared/fixtures bash benchmarks/gpu_checks.sh OUT [CHECK ...]
#
# Logs go to OUT (default /tmp/rlae_gpu_checks), one file per check. With no CHECK, all of them run in
# this order (the most wanted first); each has its own time limit (seconds, in brackets), so one that
# hangs or fails leaves the others' logs. All of them take ~35 minutes, more than a lent device's
# 15: name the ones a call can afford. Where ../shared does not travel with the repo, copy the fixtures into an
# ignored folder of the repo (e.g. .fixtures) and point RLAE_FIXTURES there.
#   device        [120] GPU, driver, library versions, a tiny ensemble decode on the GPU and the decode loops'
#                       compile options (always first)
#   profile       [300] where an ensemble step's time goes at batch 1 (kernels and their calls per step, copies
#                       and host syncs, vs both members alone): tiny-real first (its step is fixed per-step cost
#                       on a GPU, 0.23 ms against 0.10 for both members), then ~100M
#   command_buffers [480] every program compiled with the library's decode-loop options (loops and conditionals in
#                       command buffers) and with XLA's default command buffers, timed interleaved: tiny-real at
#                       batch 1 and 16, then ~100M at batch 1 (command_buffers.txt). On an H200 the
#                       tiny-real batch 1 half took 70 s; ~100M did not compile both variants in 120 s
#   ensemble_100m [360] ~100M ensemble step / Σ member steps at batch 1 and 16, distinct prompts (ensemble_100m.txt)
#   throughput    [300] the same for the tiny sizes (tiny-trained, tiny-real), with working memory
#                 (decode_throughput.py now fills batch 16 with distinct prompts, as a dataset batch; the GPU
#                 rounds in RESULTS-ARCHIVE.md before 2026-11-26 14:38 repeated one prompt: add --prompts same to compare)
#   vs_reference  [300] ours vs the PyTorch reference loop, both on the GPU, batch 1 (goal ≥ 5x)
#   tests         [300] the engine's exactness tests, the transformers parity tests and the vmapped RL train step
#                       (equal to the train step jitted with the decode-loop options), jax on the GPU
#                       (tests/conftest.py makes float32 matmuls full precision: no TF32)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/rlae_gpu_checks}
shift || true
checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(profile command_buffers ensemble_100m throughput vs_reference tests)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU in vs_reference

device() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 120 python3 - <<'EOF'
import jax, flax, numpy, tokenizers, torch, transformers
print(f"jax {jax.__version__} {jax.devices()} | flax {flax.__version__} | torch {torch.__version__} "
      f"(cuda {torch.cuda.is_available()}) | transformers {transformers.__version__} | tokenizers "
      f"{tokenizers.__version__} | numpy {numpy.__version__}")
import sys; sys.path.insert(0, "benchmarks")
from decode_throughput import make_members
from rlae_jax import Ensemble
from rlae_jax.engine import generate
members, _ = make_members("tiny-trained", 1.0)
out = generate(Ensemble(members), ["Once upon a time"], max_new_tokens=8)
print("tiny ensemble decode on", jax.default_backend(), "->", repr(out.texts[0]))
from rlae_jax.runtime.compile_options import decode_loop_options
print("decode loops compiled with", decode_loop_options() or "XLA's default options")
EOF
}

ensemble_100m() {
  timeout 360 python3 benchmarks/decode_throughput.py --sizes 100m --repeats 3 2>&1 | tee "$out/ensemble_100m.txt"
}

command_buffers() {
  {
    timeout 180 python3 benchmarks/decode_throughput.py --sizes tiny-real --repeats 3 --command-buffers loops,xla
    timeout 300 python3 benchmarks/decode_throughput.py --sizes 100m --batches 1 --repeats 3 \
      --command-buffers loops,xla
  } 2>&1 | tee "$out/command_buffers.txt"
}

throughput() {
  timeout 300 python3 benchmarks/decode_throughput.py --sizes tiny-real,tiny-trained --repeats 3 2>&1 \
    | tee "$out/throughput.txt"
}

vs_reference() {
  timeout 300 python3 benchmarks/vs_reference.py --torch-device cuda --new-tokens 64 2>&1 | tee "$out/vs_reference.txt"
}

tests() {
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_models.py tests/test_rl_train.py \
    -k "one_hot_weights_reproduce or vmapped \
or two_copies or every_batch_row or threshold_extremes or growing or certified or logits_match or greedy_continuations \
or cached_decode" 2>&1 | tee "$out/tests.txt"
}

profile() {
  timeout 120 python3 benchmarks/profile_step.py --size tiny-real --batch 1 --tokens 64 --top 40 2>&1 \
    | tee "$out/profile_tiny_real.txt"
  timeout 180 python3 benchmarks/profile_step.py --size 100m --batch 1 --tokens 32 --top 30 2>&1 | tee "$out/profile_100m.txt"
}

device 2>&1 | tee "$out/device.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "device check failed: see $out/device.txt"; exit 1; }
for check in "${checks[@]}"; do
  case $check in
    ensemble_100m|command_buffers|throughput|vs_reference|tests|profile) echo "== $check $(date +%T)"; $check ;;
    device) ;;
    *) echo "unknown check '$check' (profile, ensemble_100m, command_buffers, throughput, vs_reference, tests)"; exit 2 ;;
  esac
done
