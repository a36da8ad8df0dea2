#!/usr/bin/env bash
# The GPU checks recorded in benchmarks/RESULTS.md, in one go on a machine with one NVIDIA GPU and jax[cuda],
# torch (CUDA build) and transformers installed. Logs go to $1 (default /tmp/rlae_gpu_checks), one file per check:
#   device.txt             GPU, driver, library versions, and a tiny ensemble decode on the GPU
#   vs_reference.txt       ours vs the PyTorch reference loop, both on the GPU, batch 1 (goal ≥ 5x)
#   decode_throughput.txt  ensemble step / Σ member steps at batch 1 and 16
#   first_pass_4.txt       the same at ~100M with re-spellings of up to 4 tokens in each step's first pass
#                          (DecodeConfig.first_pass_tokens=4; slower on a CPU, untested on a GPU)
#   tests.txt              the engine's exactness tests and the transformers parity tests, jax on the GPU
#                          (tests/conftest.py makes float32 matmuls full precision: no TF32)
#   profile_100m.txt       where a ~100M ensemble step's time goes at batch 1 (kernels, vs both members alone)
# Each check has its own time limit, so one that hangs or fails leaves the others' logs.
#
#     RLAE_FIXTURES=../shared/fixtures bash benchmarks/gpu_checks.sh /tmp/gpu_logs
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/rlae_gpu_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU in vs_reference

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 120 python3 - <<'EOF'
import jax, flax, numpy, tokenizers, torch, transformers
print(f"jax {jax.__version__} {jax.devices()} | flax {flax.__version__} | torch {torch.__version__} "
      f"(cuda {torch.cuda.is_available()}) | transformers {transformers.__version__} | tokenizers "
      f"{tokenizers.__version__} | numpy {numpy.__version__}")
import sys; sys.path.insert(0, "benchmarks")
from decode_throughput import make_members
from rlae_jax.align import build_alignment
from rlae_jax.engine import generate
members, _ = make_members("tiny-trained", 1.0)
alignment = build_alignment([m.tokenizer for m in members], vocab_sizes=[m.config.vocab_size for m in members])
out = generate(members, alignment, ["Once upon a time"], max_new_tokens=8)
print("tiny ensemble decode on", jax.default_backend(), "->", repr(out.texts[0]))
EOF
} 2>&1 | tee "$out/device.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "device check failed: see $out/device.txt"; exit 1; }

timeout 300 python3 benchmarks/vs_reference.py --torch-device cuda --new-tokens 64 2>&1 | tee "$out/vs_reference.txt"
timeout 600 python3 benchmarks/decode_throughput.py --repeats 3 2>&1 | tee "$out/decode_throughput.txt"
timeout 300 python3 benchmarks/decode_throughput.py --sizes 100m --repeats 3 --first-pass-tokens 4 2>&1 \
  | tee "$out/first_pass_4.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_models.py -k "one_hot_weights_reproduce \
or two_copies or every_batch_row or threshold_extremes or growing or certified or logits_match or greedy_continuations \
or cached_decode" 2>&1 | tee "$out/tests.txt"
timeout 240 python3 benchmarks/profile_step.py --size 100m --batch 1 --tokens 32 --top 30 2>&1 | tee "$out/profile_100m.txt"
