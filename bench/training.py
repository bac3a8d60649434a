"""Training steps per second in float32 against mixed precision, on the same model and batches.

    python bench/training.py [--arch demo] [--batch-size 64] [--steps 8] [--threads 2]
                             [--repeats 2] [--device auto]

Builds the architecture (`--arch` as `dicom-node train` takes it), then times full training
steps (image and text forward, CheXzero's symmetric loss, backward, AdamW) on random images and
short report sentences, alternating float32 and mixed precision (`ml.training.loop`'s choice:
float16 on CUDA, bfloat16 on a CPU with AVX512-BF16 or AMX; none elsewhere, and then the
script says so). Prints each rate, the best of `--repeats` alternating runs, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.architecture import build_model, input_size
from ml.training.config import architecture_from_text
from ml.training.loop import PairEncoder, mixed_precision_dtype
from ml.training.text import tokenize_reports

SENTENCES = ["No pneumothorax.", "Large right pleural effusion.", "Support devices in place.",
             "Moderate cardiomegaly.", "Consolidation in the left lower lobe."]


def steps_per_second(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                     dtype: torch.dtype | None, steps: int) -> float:
    encoder = PairEncoder(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    device = images.device.type

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = encoder(images, tokens)
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    step()  # warm-up: allocator, kernels
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    arch = architecture_from_text(args.arch)
    mixed = mixed_precision_dtype(True, device)
    print(f"{arch.describe()} on {device}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} CPU threads")
    if mixed is None:
        print("no native mixed precision here (CPU without AVX512-BF16/AMX): nothing to compare")
        return
    torch.manual_seed(0)
    model = build_model(arch).to(device).train()
    size = input_size(model)
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.batch_size)]
    tokens = tokenize_reports(texts, model.context_length).to(device)
    best = {"float32": 0.0, str(mixed).removeprefix("torch."): 0.0}
    for _ in range(args.repeats):
        for name, dtype in (("float32", None), (str(mixed).removeprefix("torch."), mixed)):
            best[name] = max(best[name], steps_per_second(model, images, tokens, dtype, args.steps))
    (base, fast) = best.values()
    for name, rate in best.items():
        print(f"{name:>9}: {rate:6.2f} steps/s ({rate * args.batch_size:7.1f} pairs/s)")
    print(f"ratio mixed/float32: {fast / base:.2f}")


if __name__ == "__main__":
    main()
