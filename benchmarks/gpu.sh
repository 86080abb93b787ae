#!/usr/bin/env bash
# Every GPU figure of issue 26, in one run on one GPU (under 8 minutes on an H100):
#   1. GMM EM per iteration, N = 1e6 float32 rows: D = 64, K = 64 full covariance, and
#      D = 128, K = 1024 spherical; lvm-zoo's fit_em against scikit-learn's array-API
#      GaussianMixture on the same GPU, same start, same iterations (benchmarks/gpu_steps.py gmm);
#   2. one epoch of the 784-400-20 Bernoulli VAE on MNIST: `lvm-zoo fit dglvm` against a
#      hand-written PyTorch loop; then `lvm-zoo evaluate` of that run with IWAE-5000 on the
#      10,000 MNIST test images (benchmarks/gpu_steps.py vae).
# Each figure is one JSON line in OUT/figures.jsonl (with the GPU's name); the log in OUT/log.txt.
#
#   benchmarks/gpu.sh [OUT]          # on the GPU (default OUT: benchmarks/gpu-results)
#   benchmarks/gpu.sh --cpu [OUT]    # the same steps at smoke size on the CPU (CI), < 1 minute
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
smoke=0
if [[ "${1:-}" == "--cpu" ]]; then
    smoke=1
    shift
fi
out=${1:-$root/benchmarks/gpu-results}
mkdir -p "$out"
: > "$out/figures.jsonl"
steps=("$python" "$root/benchmarks/gpu_steps.py")

if [[ $smoke == 1 ]]; then
    device=cpu
    gmm=(--num-data 2000 --case full:8:4 --case spherical:16:32 --iterations 3)
    vae=(--rows 128 --iwae-samples 20 --fit-iwae-samples 10)
else
    device=cuda
    if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu.sh: no CUDA device here; run it on a GPU machine, or --cpu for the smoke size" >&2
        exit 2
    fi
    gmm=(--num-data 1000000 --case full:64:64 --case spherical:128:1024 --iterations 10)
    vae=(--iwae-samples 5000)
fi

{
    echo "gpu.sh on $device ($(date -u +%Y-%m-%dT%H:%M:%SZ)), smoke=$smoke"
    if [[ $device == cuda ]]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    fi
    began=$SECONDS
    "${steps[@]}" gmm --device "$device" "${gmm[@]}" --results "$out/figures.jsonl"
    "${steps[@]}" vae --device "$device" "${vae[@]}" --results "$out/figures.jsonl"
    echo "gpu.sh: done in $((SECONDS - began)) s; figures in $out/figures.jsonl"
} 2>&1 | tee "$out/log.txt"
