"""A tiny fine-tuning run for the process-level tests: kill and resume, and 1 vs 2 processes (torchrun).

    python finetune_run.py OUT_DIR EPOCHS [--resume]
"""
import os
import sys
from pathlib import Path

import torch
from torch import nn

import prunekit
from prunekit.data import load_dataset
from prunekit.io import save_weights
from prunekit.train import CHECKPOINT

torch.set_num_threads(1)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def main(out: Path, epochs: int, resume: bool) -> None:
    dense = tiny()
    result = prunekit.compress(dense, torch.zeros(1, 1, 28, 28), 0.5, method="l1")
    data = load_dataset("synthetic", split="train")
    prunekit.finetune(result, data, epochs=epochs, teacher=dense, lr=0.05, batch_size=32,
                      checkpoint=out / CHECKPOINT, resume=resume, progress=False, device="cpu")
    if os.environ.get("RANK", "0") == "0":
        save_weights(result.model, out / "final.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv)
