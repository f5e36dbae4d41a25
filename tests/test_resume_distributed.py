"""Checkpoints, resume after SIGKILL, and 1 vs 2 processes (torchrun, gloo): the training engine's promises."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import prunekit
from prunekit import CheckpointError
from prunekit.data import load_dataset
from prunekit.data.synthetic import synthetic
from prunekit.train import CHECKPOINT, Recipe, fit
from prunekit.train import loop as loop_module
from prunekit.train.batches import epoch_batches, global_batches

SCRIPT = Path(__file__).parent / "scripts" / "finetune_run.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
QUICK = dict(epochs=3, lr=0.05, batch_size=64, max_steps_per_epoch=3)


def _tiny(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 10))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    data = load_dataset("synthetic", split="train")
    whole = _tiny()
    fit(whole, data, Recipe(**QUICK), progress=False)

    real_save = loop_module.save_state
    def save_then_die(*args, **kwargs):  # the process dies right after the first checkpoint lands
        real_save(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(loop_module, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(_tiny(), data, Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, progress=False)
    monkeypatch.setattr(loop_module, "save_state", real_save)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1

    resumed = _tiny()
    history = fit(resumed, data, Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, resume=True,
                  log=tmp_path / "log.jsonl", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    assert _same(resumed.state_dict(), whole.state_dict())


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    epochs = 8
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    subprocess.run([sys.executable, str(SCRIPT), str(whole), str(epochs)], check=True, env=ENV, capture_output=True)

    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed), str(epochs)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = torch.load(killed / CHECKPOINT, weights_only=True)["epoch"]
    assert 1 <= done < epochs and not (killed / "final.safetensors").exists()

    subprocess.run([sys.executable, str(SCRIPT), str(killed), str(epochs), "--resume"], check=True, env=ENV,
                   capture_output=True)
    assert _same(load_file(killed / "final.safetensors"), load_file(whole / "final.safetensors"))


def test_two_processes_agree_with_one(tmp_path):
    """torchrun + gloo: each process trains half of every batch and DDP averages the gradients, so the
    result matches one process up to BatchNorm statistics taken per half batch: tolerance 1% (relative L2
    over all parameters) and 5% on the running statistics, after 48 steps."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    subprocess.run([sys.executable, str(SCRIPT), str(one), "3"], check=True, env=ENV, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    str(SCRIPT), str(two), "3"], check=True, env=ENV, capture_output=True)
    a, b = load_file(one / "final.safetensors"), load_file(two / "final.safetensors")
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert not _same(a, b)  # two processes really ran (BatchNorm saw half batches)
    for keys, tol in ((params, 0.01), (stats, 0.05)):
        x = torch.cat([a[k].flatten() for k in keys])
        y = torch.cat([b[k].flatten() for k in keys])
        assert (x - y).norm() / x.norm() < tol
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("num_batches_tracked"))


def test_resuming_another_models_checkpoint_is_refused_and_kept(tmp_path):
    data = load_dataset("synthetic", split="train")
    fit(_tiny(8), data, Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, progress=False)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(CheckpointError, match="another model"):
        fit(_tiny(12), data, Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="lr=0.05"):
        fit(_tiny(8), data, Recipe(**{**QUICK, "lr": 0.1}), checkpoint=tmp_path / CHECKPOINT, resume=True,
            progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == before


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        fit(_tiny(), load_dataset("synthetic"), Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, resume=True,
            progress=False)


def test_finished_run_resumes_to_nothing(tmp_path):
    data = load_dataset("synthetic")
    model = _tiny()
    fit(model, data, Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, progress=False)
    again = _tiny()
    history = fit(again, data, Recipe(**QUICK), checkpoint=tmp_path / CHECKPOINT, resume=True, progress=False)
    assert len(history) == 3 and _same(again.state_dict(), model.state_dict())


def test_finetune_api_distills_into_a_compress_result():
    dense = _tiny(16)
    result = prunekit.compress(dense, torch.zeros(1, 1, 28, 28), 0.5)
    data = load_dataset("synthetic")
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    history = prunekit.finetune(result, data, epochs=2, teacher=dense, batch_size=64, max_steps_per_epoch=2,
                                progress=False)
    assert len(history) == 2 and result.summary["finetune"]["distilled"]
    assert not _same(before, result.model.state_dict()) and not result.model.training
    with pytest.raises(prunekit.ConfigError, match="epochs must be > 0"):
        prunekit.finetune(result, data, epochs=0)
    with pytest.raises(prunekit.ConfigError, match="a model or the Result"):
        prunekit.finetune("resnet20", data)


# -- batches -------------------------------------------------------------------------------------
def test_shards_of_two_processes_make_the_one_process_batch():
    data = synthetic(length=100)
    one = list(epoch_batches(data, 32, seed=3, epoch=1, steps=4, device=torch.device("cpu")))
    halves = [list(epoch_batches(data, 32, seed=3, epoch=1, steps=4, device=torch.device("cpu"), rank=r, world=2))
              for r in range(2)]
    for whole, a, b in zip(one, *halves):
        assert torch.equal(whole[0], torch.cat([a[0], b[0]])) and torch.equal(whole[1], torch.cat([a[1], b[1]]))
    assert [len(b) for b in global_batches(100, 32, 3, 1, 4)] == [32, 32, 32, 4]
    assert not torch.equal(global_batches(100, 32, 3, 1, 1)[0], global_batches(100, 32, 3, 2, 1)[0])


def test_batched_augmentation_is_a_shift_and_flip_of_each_image():
    data = load_dataset("synthetic")
    plain = data.batch(torch.arange(16))[0]
    assert torch.equal(plain, torch.stack([data[i][0] for i in range(16)]))
    data.pad, data.flip = 2, True
    aug = data.batch(torch.arange(16), torch.Generator().manual_seed(0))[0]
    padded = nn.functional.pad(plain * data.std + data.mean, (2,) * 4)
    for i in range(16):
        candidates = [(padded[i, :, dy:dy + 28, dx:dx + 28] - data.mean) / data.std for dy in range(5) for dx in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.allclose(aug[i], c, atol=1e-5) for c in candidates)
    assert not torch.equal(aug, plain)
