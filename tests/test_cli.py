"""The CLI: one-line errors, non-zero exit, no traceback, nothing written on failure."""
import json
import os
import subprocess
import sys

import pytest
import torch

from prunekit.cli import main
from prunekit.models import create_model
from tests.conftest import needs_fmnist


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("prunekit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,needle", [
    (["--budget", "flops=0"], "must be > 0"),
    (["--budget", "flops=1.5"], "above 1"),
    (["--budget", "flops=10"], "below the smallest"),
    (["--budget", "params=100"], "below the smallest"),
    (["--budget", "flops=0.5", "--method", "nope"], "unknown method"),
    (["--budget", "flops=0.5", "--model", "resnet999"], "unknown model"),
    (["--budget", "flops=0.5", "--dataset", "mnist99"], "unknown dataset"),
])
def test_compress_bad_input(capsys, tmp_path, argv, needle):
    out = tmp_path / "out"
    base = ["compress", "--model", "resnet20", "--out", str(out), "--input-size", "28", "--in-channels", "1"]
    if "--model" in argv:
        base = ["compress", "--out", str(out)]
    code, _, err = run(capsys, *base, *argv)
    assert_one_line_error(code, err)
    assert needle in err
    assert not out.exists()


def test_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "compress", "--model", "resnet20", "--budget", "flops=0.5", "--out", str(blocker / "sub"))
    assert_one_line_error(code, err)
    assert "choose another --out" in err


def test_corrupt_and_mismatched_checkpoints(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    code, _, err = run(capsys, "compress", "--model", "resnet20", "--checkpoint", str(bad), "--budget", "flops=0.5",
                       "--out", str(out))
    assert_one_line_error(code, err)
    assert "corrupt" in err and not out.exists()
    other = tmp_path / "r56.pt"
    torch.save(create_model("resnet56").state_dict(), other)
    code, _, err = run(capsys, "compress", "--model", "resnet20", "--checkpoint", str(other), "--budget", "flops=0.5",
                       "--out", str(out))
    assert_one_line_error(code, err)
    assert "does not fit" in err and not out.exists()


def test_compress_info_eval_roundtrip(capsys, tmp_path):
    ckpt = tmp_path / "dense.pt"
    torch.manual_seed(0)
    torch.save(create_model("resnet20", in_channels=1).state_dict(), ckpt)
    out = tmp_path / "run"
    common = ["--model", "resnet20", "--dataset", "synthetic"]
    code, stdout, _ = run(capsys, "compress", *common, "--checkpoint", str(ckpt), "--budget", "flops=0.5",
                          "--method", "l1+global", "--out", str(out), "--json", "--export", "onnx,torchscript")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["macs"]["pruned"] <= summary["macs"]["target"]
    assert 0 <= summary["accuracy_pruned_bn"] <= 100
    assert {p.name for p in out.iterdir()} >= {"plan.json", "model.safetensors", "summary.json", "model.onnx"}
    code, stdout, _ = run(capsys, "eval", *common, "--checkpoint", str(out), "--json")
    assert code == 0 and 0 <= json.loads(stdout)["accuracy"] <= 100
    code, stdout, _ = run(capsys, "info", *common, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["protected"] == ["fc"] and len(info["units"]) == 12


def test_text_summary_table(capsys, tmp_path):
    code, stdout, _ = run(capsys, "compress", "--model", "resnet20", "--in-channels", "1", "--input-size", "28",
                          "--budget", "flops=0.5", "--out", str(tmp_path / "o"))
    assert code == 0
    assert "layer1.0.conv1" in stdout and "MACs" in stdout and "params" in stdout


def test_methods_lists_every_registered_name(capsys):
    code, stdout, _ = run(capsys, "methods", "--json")
    names = json.loads(stdout)
    assert code == 0 and "l1" in names["methods"] and "global" in names["allocators"] and "taylor" in names["criteria"]


def test_console_entry_exits_nonzero_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-m", "prunekit", "compress", "--model", "resnet20", "--budget", "flops=-1",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1


@needs_fmnist
def test_compress_resnet56_fmnist(capsys, tmp_path):
    """The whole command (data, graph, plan, surgery, verification, files) but evaluation and fine-tuning."""
    code, stdout, _ = run(capsys, "compress", "--model", "resnet56", "--dataset", "fmnist", "--budget", "flops=0.5",
                          "--out", str(tmp_path / "o"), "--no-eval", "--json")
    assert code == 0
    assert json.loads(stdout)["macs"]["pruned"] <= 0.5 * 96_050_048


def test_compress_with_finetuning(capsys, tmp_path):
    code, stdout, _ = run(capsys, "compress", "--model", "resnet20", "--dataset", "synthetic", "--budget", "flops=0.5",
                          "--out", str(tmp_path / "o"), "--finetune-epochs", "1", "--max-steps", "2", "--json")
    s = json.loads(stdout)
    assert code == 0 and 0 <= s["accuracy_finetuned"] <= 100 and len(s["finetune"]["epochs"]) == 1
    assert s["finetune"]["recipe"]["lr"] == 0.05


@pytest.mark.parametrize("argv,needle", [(["--finetune-epochs", "-1"], "epochs must be > 0"),
                                         (["--finetune-epochs", "1", "--finetune-lr", "0"], "lr must be > 0"),
                                         (["--finetune-epochs", "1", "--dataset", ""], "needs training data")])
def test_bad_finetuning(capsys, tmp_path, argv, needle):
    out = tmp_path / "o"
    code, _, err = run(capsys, "compress", "--model", "resnet20", "--dataset", "synthetic", "--budget", "flops=0.5",
                       "--out", str(out), *argv)
    assert_one_line_error(code, err)
    assert needle in err and not out.exists()


def test_train_writes_weights_log_and_history(capsys, tmp_path):
    out = tmp_path / "dense"
    code, _, _ = run(capsys, "train", "--model", "resnet20", "--dataset", "synthetic", "--epochs", "2",
                     "--max-steps", "2", "--out", str(out))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json", "log.jsonl", "model.safetensors"]
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
    code, stdout, _ = run(capsys, "eval", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint",
                          str(out / "model.safetensors"), "--json")
    assert code == 0 and 0 <= json.loads(stdout)["accuracy"] <= 100


@pytest.mark.parametrize("argv,needle", [(["--epochs", "0"], "epochs must be > 0"), (["--lr", "-1"], "lr must be > 0")])
def test_bad_training(capsys, tmp_path, argv, needle):
    out = tmp_path / "dense"
    code, _, err = run(capsys, "train", "--model", "resnet20", "--dataset", "synthetic", "--out", str(out), *argv)
    assert_one_line_error(code, err)
    assert needle in err and not out.exists()


def test_train_resume_and_the_runs_it_refuses(capsys, tmp_path):
    out = tmp_path / "dense"
    common = ["train", "--dataset", "synthetic", "--epochs", "1", "--max-steps", "1", "--out", str(out)]
    assert run(capsys, *common, "--model", "resnet20")[0] == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, *common, "--model", "resnet20")  # would overwrite the run
    assert_one_line_error(code, err)
    assert "pass --resume" in err
    code, _, err = run(capsys, *common, "--model", "resnet56", "--resume")  # another model's checkpoint
    assert_one_line_error(code, err)
    assert "another model" in err
    code, _, err = run(capsys, *common, "--model", "resnet20", "--resume", "--lr", "0.1")
    assert_one_line_error(code, err)
    assert "lr=0.2" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # nothing overwritten
    assert run(capsys, *common, "--model", "resnet20", "--resume")[0] == 0  # finished run: resumes to the end


def test_compress_finetuning_resumes_from_its_checkpoint(capsys, tmp_path):
    out = tmp_path / "o"
    argv = ["compress", "--model", "resnet20", "--dataset", "synthetic", "--budget", "flops=0.5", "--out", str(out),
            "--finetune-epochs", "1", "--max-steps", "1", "--no-eval", "--json"]
    code, first, _ = run(capsys, *argv)
    assert code == 0 and (out / "checkpoint.pt").exists()
    code, _, err = run(capsys, *argv[:6], "flops=0.3", *argv[7:], "--resume")  # another pruned architecture
    assert_one_line_error(code, err)
    assert "another model" in err
    code, again, _ = run(capsys, *argv, "--resume")
    assert code == 0 and json.loads(again)["finetune"]["epochs"] == json.loads(first)["finetune"]["epochs"]
