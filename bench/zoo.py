"""The model zoo: every built-in, torchvision and timm model of issue 11 through `prunekit.compress`.

Each model at flops=0.5 with `l1` and `l1+global` either meets the budget with a running model whose
output shape equals the dense one and whose measured cost equals the prediction, or is refused in one
line before calibration (a sentinel dataset records whether any image was read before the refusal).

    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --out bench/results/zoo --jobs 2 --resume   # ~15 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path

import torch
from torch.utils.data import Dataset

import prunekit
from prunekit import CostModel, PrunekitError, UnitGraph, count
from prunekit.models import create_model

# (name for prunekit.models.create_model, input side); 3 channels, 10 classes everywhere
BUILTIN = [("resnet20", 32), ("resnet56", 32), ("vgg16_bn", 32), ("mobilenetv2", 32)]
TORCHVISION = [("tv:resnet18", 64), ("tv:vgg11_bn", 64), ("tv:googlenet", 64), ("tv:googlenet+aux", 64),
               ("tv:inception_v3", 80),
               ("tv:densenet121", 64), ("tv:resnext50_32x4d", 64), ("tv:regnet_x_400mf", 64),
               ("tv:regnet_y_400mf", 64), ("tv:mobilenet_v2", 64), ("tv:mobilenet_v3_small", 64),
               ("tv:efficientnet_b0", 64), ("tv:shufflenet_v2_x0_5", 64), ("tv:squeezenet1_0", 64),
               ("tv:mnasnet0_5", 64), ("tv:convnext_tiny", 64)]
TIMM = [("timm:resnet10t", 64), ("timm:mobilenetv3_small_050", 64), ("timm:efficientnet_b0", 64),
        ("timm:regnetx_002", 64), ("timm:ghostnet_050", 64), ("timm:rexnet_100", 64), ("timm:dla34", 64),
        ("timm:lcnet_050", 64)]
ZOO = BUILTIN + TORCHVISION + TIMM
METHODS = ("l1", "l1+global")


class Sentinel(Dataset):
    """Calibration data that remembers whether anything read it (a refusal must come before)."""

    def __init__(self, side: int, n: int = 8):
        self.side, self.n, self.read = side, n, False

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read = True
        return torch.randn(3, self.side, self.side, generator=torch.Generator().manual_seed(i)), i % 10


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.endswith("+aux"):  # torchvision's default: auxiliary heads that run only in training mode
        return create_model(name[:-4], num_classes=10).eval()
    kw = {"aux_logits": False} if name in ("tv:googlenet", "tv:inception_v3") else {}
    return create_model(name, num_classes=10, **kw).eval()


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()}"


def run_one(name: str, side: int, method: str, model, x, cache: dict) -> dict:
    data = Sentinel(side)
    row = {"model": name, "input": side, "method": method}
    t0 = time.perf_counter()
    try:
        r = prunekit.compress(model, x, 0.5, method=method, data=data, calibration_batches=1, calibration_batch_size=8,
                              reconstruct=0)
    except PrunekitError as e:
        row.update(status="refused", seconds=round(time.perf_counter() - t0, 2), message=one_line(e),
                   one_line="\n" not in str(e).strip(), before_calibration=not data.read)
        return row
    except Exception as e:  # a crash: a bug or an unwrapped library error, to be routed to the core
        row.update(status="crash", seconds=round(time.perf_counter() - t0, 2), message=one_line(e).splitlines()[0],
                   where=traceback.extract_tb(e.__traceback__)[-1].filename.split("site-packages/")[-1],
                   before_calibration=not data.read)
        return row
    row["seconds"] = round(time.perf_counter() - t0, 2)
    s = r.summary
    with torch.no_grad():
        dense_out, pruned_out = model(x), r.model.eval()(x)
    macs, params = count(r.model, x)
    # an independent cost model of the dense model (not the one compress verified against)
    if "cost" not in cache:  # once per model
        cache["cost"] = CostModel(UnitGraph(copy.deepcopy(model), x))
    predicted = cache["cost"].evaluate(r.plan.widths)
    row.update(
        macs_kept=100 * macs / s["macs"]["dense"], params_kept=100 * params / s["params"]["dense"],
        budget_met=macs <= s["macs"]["target"], within_tolerance=bool(s["within_tolerance"]),
        same_output_shape=tuple(pruned_out.shape) == tuple(dense_out.shape),
        predicted_equals_measured=(round(predicted["macs"]), round(predicted["params"])) == (macs, params),
        units=len(r.plan.widths), units_pruned=sum(r.plan.widths[k] < r.plan.dense_widths[k] for k in r.plan.widths))
    try:  # a pruned model must also run in training mode (BatchNorm batch statistics, auxiliary heads)
        with torch.no_grad():
            copy.deepcopy(r.model).train()(torch.cat([x, x]))
        row["train_mode_runs"] = True
    except Exception as e:
        row["train_mode_runs"] = False
        row["train_mode_error"] = one_line(e).splitlines()[0]
    row["status"] = "ok" if row["budget_met"] and row["same_output_shape"] and row["predicted_equals_measured"] else "wrong"
    return row


def run_model(name: str, side: int) -> list[dict]:
    """Rows for one model, printed as JSON lines as they are measured."""
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    try:
        model = build(name)
    except Exception as e:
        rows = [{"model": name, "input": side, "method": m, "status": "build failed", "message": one_line(e)} for m in METHODS]
        for r in rows:
            print(json.dumps(r), flush=True)
        return rows
    rows, cache = [], {}
    for m in METHODS:
        rows.append(run_one(name, side, m, model, x, cache))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def in_subprocess(name: str, side: int, timeout: float) -> list[dict]:
    """One model in its own process, so a hang inside a library is recorded instead of stopping the zoo."""
    cmd = [sys.executable, __file__, "--worker", f"{name}@{side}"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, why = p.stdout, f"process died (exit {p.returncode}): {(p.stderr.strip().splitlines() or ['?'])[-1]}"
        status = "crash"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        why, status = f"no result after {time.perf_counter() - t0:.0f} s (killed)", "hang"
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    for r in rows:
        print(json.dumps(r), flush=True)
    rows += [{"model": name, "input": side, "method": m, "status": status, "seconds": round(time.perf_counter() - t0),
              "message": why} for m in METHODS[len(rows):]]
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads (2-core machine shared with other jobs)"


def versions() -> dict:
    return {p: version(p) for p in ("torch", "torchvision", "torch-pruning", "timm")}


def markdown(res: dict) -> str:
    rows = res["rows"]
    lines = [
        "# Model zoo: flops=0.5 with l1 and l1+global",
        "",
        f"    {res['command']}",
        "",
        f"Machine: {res['machine']}. Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".",
        "Random weights (no pretrained download), batch-1 input of the side shown, 10 classes, `compress(model, x, 0.5,",
        "method=..., data=<sentinel>)`. *ok*: MACs at or below 50% of dense, output shape equal to the dense model's,",
        "measured MACs/params equal to an independent CostModel's prediction. *refused*: a one-line `PrunekitError`,",
        "with the seconds to refusal and whether it came before the calibration data was read. *crash*: any other",
        "exception (a bug to fix). *hang*: no result within the per-model timeout. *train fwd*: the pruned model",
        "also runs in training mode. *seconds*: wall time of `compress`, inflated several times by the machine's load.",
        "",
        "| model | input | method | status | MACs kept % | params kept % | units pruned | seconds | train fwd | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] in ("ok", "wrong"):
            note = "" if r["status"] == "ok" else ", ".join(
                k for k in ("budget_met", "same_output_shape", "predicted_equals_measured") if not r[k])
            if not r.get("within_tolerance", True):
                note = (note + "; " if note else "") + "more than 1% under the target"
            if not r["train_mode_runs"]:
                note = (note + "; " if note else "") + f"train mode: {r['train_mode_error']}"
            lines.append(f"| {r['model']} | {r['input']} | {r['method']} | {r['status']} | {r['macs_kept']:.1f} | "
                         f"{r['params_kept']:.1f} | {r['units_pruned']}/{r['units']} | {r['seconds']:.1f} | "
                         f"{'yes' if r['train_mode_runs'] else 'no'} | {note} |")
        else:
            when = " (after calibration)" if r["status"] != "hang" and r.get("before_calibration") is False else ""
            lines.append(f"| {r['model']} | {r['input']} | {r['method']} | {r['status']}{when} | | | | "
                         f"{r.get('seconds', 0):.1f} | | {r['message'].replace('|', '/')[:300]} |")
    models = list(dict.fromkeys(r["model"] for r in rows))
    ok = [m for m in models if all(r["status"] == "ok" for r in rows if r["model"] == m)]
    refused = [m for m in models if all(r["status"] == "refused" for r in rows if r["model"] == m)]
    bad = [m for m in models if m not in ok and m not in refused]
    lines += ["", f"**{len(ok)} of {len(models)} models pruned to the budget with both methods**: {', '.join(ok) or '-'}.",
              f"**Refused in one line**: {', '.join(refused) or 'none'}.",
              f"**Crash, hang or wrong result** (bugs): {', '.join(bad) or 'none'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/zoo", help="writes OUT.json and OUT.md")
    ap.add_argument("--only", default="", help="comma-separated model names (default: the whole zoo)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per model before it counts as a hang")
    ap.add_argument("--jobs", type=int, default=1, help="models measured at once (each in its own process)")
    ap.add_argument("--resume", action="store_true", help="keep the models OUT.json already has (--only: redo those)")
    ap.add_argument("--merge", default="", help="with --resume: take the rows of this other OUT.json for its models")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # one model, rows as JSON on stdout
    args = ap.parse_args(argv)
    if args.worker:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        name, side = args.worker.rsplit("@", 1)
        run_model(name, int(side))
        return
    only = {n for n in args.only.split(",") if n}
    zoo = [(n, s) for n, s in ZOO if not only or n in only]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    command = "OMP_WAIT_POLICY=PASSIVE python bench/zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    order = {n: i for i, (n, _) in enumerate(ZOO)}
    done, previous = [], ""
    if args.resume and out.with_suffix(".json").exists():  # keep finished models, except those --only names again
        old = json.loads(out.with_suffix(".json").read_text())
        previous = old["command"] + " && "
        done = [r for r in old["rows"] if not (only and r["model"] in only)]
    res = {"command": previous + command.strip(), "machine": machine(), "versions": versions(), "rows": done}
    if args.merge:  # rows measured by another run (e.g. a redo of timed-out models) replace these models' rows
        other = json.loads(Path(args.merge).read_text())
        got = {r["model"] for r in other["rows"]}
        res["rows"] = sorted([r for r in done if r["model"] not in got] + other["rows"],
                             key=lambda r: (order[r["model"]], METHODS.index(r["method"])))
        res["command"] += f" && ({other['command']})"
        zoo = []
    todo = [(n, s) for n, s in zoo if n not in {r["model"] for r in done}]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each model is its own process
        for rows in as_completed([pool.submit(in_subprocess, n, s, args.timeout) for n, s in todo]):
            res["rows"] = sorted(res["rows"] + rows.result(), key=lambda r: (order[r["model"]], METHODS.index(r["method"])))
            out.with_suffix(".json").write_text(json.dumps(res, indent=1))  # partial results survive an interruption
            out.with_suffix(".md").write_text(markdown(res))
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
