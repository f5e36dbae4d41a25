"""Training loop: determinism, learning, distillation, BatchNorm re-estimation and bad recipes."""
import pytest
import torch
from torch import nn

from prunekit import ConfigError
from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.train import Recipe, distillation_loss, evaluate, fit, make_optimizer, recalibrate_bn

QUICK = dict(epochs=2, lr=0.05, batch_size=32, max_steps_per_epoch=4)


def _tiny():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def _data():
    return load_dataset("synthetic", split="train")


def test_same_seed_same_weights():
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = _tiny()
        fit(model, _data(), Recipe(**QUICK), progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    history = fit(_tiny(), _data(), Recipe(epochs=4, lr=0.1, batch_size=64, max_steps_per_epoch=8), progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_history_is_logged_as_json_lines(tmp_path):
    fit(_tiny(), _data(), Recipe(**QUICK), eval_data=_data(), log=tmp_path / "log.jsonl", progress=False)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"eval_acc"' in lines[0]


def test_no_weight_decay_on_norm_and_bias():
    groups = make_optimizer(_tiny(), Recipe()).param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])


def test_distillation_from_itself_is_cross_entropy_only():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    recipe = Recipe(label_smoothing=0.0)
    ce = nn.functional.cross_entropy(logits, y)
    assert torch.allclose(distillation_loss(logits, logits, y, recipe), (1 - recipe.kd_weight) * ce, atol=1e-6)


def test_teacher_with_other_classes_is_refused():
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 7))
    with pytest.raises(ConfigError, match="teacher predicts 7 classes"):
        fit(_tiny(), _data(), Recipe(**QUICK), teacher=teacher, progress=False)


def test_distillation_trains():
    torch.manual_seed(0)
    teacher, student = _tiny(), _tiny()
    before = [p.clone() for p in student.parameters()]
    fit(student, _data(), Recipe(**QUICK), teacher=teacher, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_recalibrate_bn_matches_the_data_and_keeps_weights():
    model = _tiny()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    data = _data()
    recalibrate_bn(model, data, batches=1000, batch_size=len(data))
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        feats = model[0](x)
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert all(torch.equal(weights[k], model.state_dict()[k]) for k in weights)
    assert model.training  # mode restored


def test_evaluate_is_a_percentage_and_restores_mode():
    model = create_model("resnet20", in_channels=1, num_classes=10)
    acc = evaluate(model, _data())
    assert 0 <= acc <= 100 and model.training


@pytest.mark.parametrize("bad,needle", [(dict(epochs=0), "epochs must be > 0"), (dict(epochs=-3), "epochs"),
                                        (dict(lr=0), "lr must be > 0"), (dict(lr=-0.1), "lr"),
                                        (dict(epochs=1.5), "whole number"), (dict(batch_size=0), "batch_size"),
                                        (dict(schedule="step"), "onecycle"), (dict(label_smoothing=1.0), "label_smoothing"),
                                        (dict(weight_decay=-1), "weight_decay")])
def test_bad_recipes(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        Recipe(**bad)


def test_one_process_may_train_on_another_device_after_the_first(monkeypatch):
    """Accelerate keeps one device per process: fine-tuning on the GPU, then a method training its
    gates on the CPU (dagger, fisher_iterative) raised "AcceleratorState has already been
    initialized". A finished single-process state for another device is started afresh."""
    from accelerate.state import PartialState

    model = _tiny()
    fit(model, _data(), Recipe(**{**QUICK, "epochs": 1, "max_steps_per_epoch": 1}), device="cpu", progress=False)
    monkeypatch.setitem(PartialState._shared_state, "device", torch.device("cuda"))  # as a GPU fine-tune leaves it
    history = fit(model, _data(), Recipe(**{**QUICK, "epochs": 1, "max_steps_per_epoch": 1}), device="cpu",
                  progress=False)
    assert len(history) == 1 and next(model.parameters()).device.type == "cpu"
