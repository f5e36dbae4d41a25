"""Why residual branches are removed (issue 17): per-op overhead on the 2-core CPU.

    python bench/branch_overhead.py     # shipped ResNet-56 -> bench/results/branch_overhead.{md,json}

Times whole models (torch.utils.benchmark median, 2 threads, eager PyTorch and onnxruntime at batch 1)
with every Unit at 8 channels, and with every residual branch removed (prunekit.drop), against the
dense model; and what the latency tables predict for the all-removed model with the two-point
calibration (table.calibrate) and with a constant residual fitted at the dense model alone.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import prunekit  # noqa: E402
from prunekit.graph import UnitGraph  # noqa: E402
from prunekit.latency import LatencyConfig, model_ms  # noqa: E402
from prunekit.models import create_model  # noqa: E402
from prunekit.pipeline import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pruned(model, x, widths) -> torch.nn.Module:
    g = UnitGraph(copy.deepcopy(model), x)
    g.apply({u.name: list(range(widths(u, g))) for u in g.units})
    return g.model


def main() -> int:
    model = create_model("resnet56", in_channels=1)
    prunekit.io.load_weights(model, ROOT / "checkpoints/fmnist-resnet56/model.safetensors")
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    variants = {
        "dense": model,
        "every Unit at 8": pruned(model, x, lambda u, g: 8),
        "every branch removed, streams dense": pruned(model, x, lambda u, g: 0 if u.name in g.droppable else u.width),
        "every branch removed, streams at 8": pruned(model, x, lambda u, g: 0 if u.name in g.droppable else 8),
    }
    out = {"command": "python bench/branch_overhead.py", "torch": torch.__version__, "rows": {}}
    for runtime, batches in (("torch", (1, 64)), ("onnxruntime", (1,))):
        for b in batches:
            cfg = LatencyConfig(threads=2, model_run_time=1.0, runtime=runtime)
            out["rows"][f"{runtime} batch {b}"] = {name: model_ms(m, x, b, cfg) for name, m in variants.items()}
            print(runtime, b, out["rows"][f"{runtime} batch {b}"], flush=True)
    prep = prepare(model, x, "l1", latency={"threads": 2, "batch": 1, "model_run_time": 1.0}, drop_blocks=True)
    lat = prep.cost.latency
    lo = prep.cost.vector({u.name: u.min_keep for u in prep.graph.units})
    parts = [sum(t.at(w)[0] for t in lat.layers) for w in (prep.cost.dense_widths, lo)]
    out["tables_batch1"] = {"dense_ms": lat.dense_ms, "smallest_calibrated_ms": lat(lo),
                            "smallest_constant_residual_ms": parts[1] + (lat.dense_ms - parts[0]),
                            "residual_ms": lat.residual, "scale": lat.scale}
    prunekit.io.write_json(ROOT / "bench/results/branch_overhead.json", out)
    lines = ["# Per-op overhead and removed branches (issue 17)", "", f"Command: `{out['command']}` "
             f"(2 threads, OMP_WAIT_POLICY=PASSIVE, torch {out['torch']}); ms, median of blocked_autorange.", "",
             "| model | " + " | ".join(out["rows"]) + " |", "|---|" + "---|" * len(out["rows"])]
    for name in variants:
        lines.append(f"| {name} | " + " | ".join(f"{r[name]:.3f}" for r in out["rows"].values()) + " |")
    t = out["tables_batch1"]
    lines += ["", f"Tables at batch 1 (eager): dense measured {t['dense_ms']:.3f} ms; the smallest prunable model "
              f"(every branch removed, streams at 8) predicted {t['smallest_calibrated_ms']:.3f} ms with the two-point "
              f"calibration (its own timing) and {t['smallest_constant_residual_ms']:.3f} ms with a constant residual "
              f"fitted at the dense model alone."]
    prunekit.io.write_text(ROOT / "bench/results/branch_overhead.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
