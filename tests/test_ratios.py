"""Fixed per-layer ratios in the CHIP paper's format: the parser, the mapping onto the built-in
ResNets and VGG (checked against the official code's adapt_channel), the budget as a ceiling, and
the inputs that must be refused."""
import functools
import json

import pytest
import torch

from prunekit import compress
from prunekit.allocation import ALLOCATORS
from prunekit.allocation.ratios import parse_ratios
from prunekit.cli import main
from prunekit.cost import CostModel
from prunekit.errors import BudgetError, ConfigError
from prunekit.graph import UnitGraph
from prunekit.models import create_model
from prunekit.signals import Signals

R56 = "[0.]+[0.15]*2+[0.4]*27"  # the paper's ResNet-56 list (42.8% params / 47.4% FLOPs removed)
R110 = "[0.]+[0.22]*2+[0.35]*18+[0.45]*36"  # ResNet-110, the headline 94.44% model
VGG16 = "[0.21]*7+[0.75]*5"  # VGG-16-BN, 58.1% FLOPs removed


def official_resnet_widths(sparsity: list[float], n: int) -> tuple[list[int], list[int]]:
    """adapt_channel from CHIP's models/resnet_cifar10.py, transcribed: the output width of the stem
    and of every block, and every block's inner width."""
    stage_out = [16] + [16] * n + [32] * n + [64] * n
    out_rate = [sparsity[0]] + [sparsity[1]] * n + [sparsity[2]] * n + [0.0] * n
    overall = [int(c * (1 - r)) for c, r in zip(stage_out, out_rate)]
    mid = [int(c * (1 - r)) for c, r in zip(stage_out[1:], sparsity[3:])]
    return overall, mid


@functools.lru_cache(maxsize=None)
def _graph(name: str, ignore: tuple[str, ...] = ()) -> UnitGraph:
    """Built once per model: tracing ResNet-110 is the slow part, and the allocator only reads it."""
    return UnitGraph(create_model(name).eval(), torch.zeros(1, 3, 16, 16), ignore=ignore)


def ratio_widths(name: str, spec, ignore: tuple[str, ...] = ()) -> tuple[UnitGraph, dict[str, int]]:
    graph = _graph(name, ignore)
    widths = ALLOCATORS.get("ratios")(graph, CostModel(graph), {}, None, Signals(), ratios=spec)
    return graph, {u.name: int(w) for u, w in zip(graph.units, widths)}


def test_parser_reads_the_paper_strings():
    assert parse_ratios("[0.]+[0.15]*2+[0.4]*2") == [0.0, 0.15, 0.15, 0.4, 0.4]
    assert parse_ratios(" [0.1, .2] * 2 + 0.3 + [1e-1] ") == [0.1, 0.2, 0.1, 0.2, 0.3, 0.1]
    assert parse_ratios([0, 0.5]) == [0.0, 0.5]
    assert len(parse_ratios(R56)) == 30 and len(parse_ratios(R110)) == 57 and len(parse_ratios(VGG16)) == 12


@pytest.mark.parametrize("spec,needle", [
    ("[0.]+[1.0]", "outside [0, 1)"),
    ("[-0.1]", "outside [0, 1)"),
    ([0.2, 1.5], "outside [0, 1)"),
    ("[0.1]*0", "repeats 0 times"),
    ("[0.1]*999999999", "repeats 999999999 times"),
    ("__import__('os').system('true')", "cannot read ratios term"),
    ("[0.1]*2*3", "cannot read ratios term"),
    ("[0.1,]", "cannot read ratios term"),
    ("", "cannot read ratios term"),
    (0.5, "list of numbers"),
])
def test_parser_refuses(spec, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_ratios(spec)


@pytest.mark.parametrize("name,n,spec", [("resnet56", 9, R56), ("resnet110", 18, R110),
                                         ("resnet56", 9, "[0.]+[0.4]*2+[0.5]*9+[0.6]*9+[0.7]*9")])
def test_resnet_mapping_matches_the_official_adapt_channel(name, n, spec):
    graph, widths = ratio_widths(name, spec)
    overall, mid = official_resnet_widths(parse_ratios(spec), n)
    blocks = [f"layer{s}.{j}" for s in (1, 2, 3) for j in range(n)]
    for b, m in zip(blocks, mid):
        assert widths[f"{b}.conv1"] == m
    stream = {u.name: u for u in graph.units if len(u.producers) > 1}
    for b, o in zip(blocks, overall[1:]):  # every block's output: the stream Unit its conv2 writes
        (unit,) = [s for s in stream.values() if f"{b}.conv2" in s.producers]
        assert widths[unit.name] == o
    assert widths["layer3.0.shortcut.0"] == 64  # the last stage's stream is never pruned
    assert overall[0] == 16 and widths["conv1"] == overall[1]  # the one deviation: our stem shares stage 1's width


def test_vgg_mapping_prunes_the_first_twelve_convs():
    graph, widths = ratio_widths("vgg16_bn", VGG16)
    dense = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    rates = parse_ratios(VGG16) + [0.0]  # the official VGG appends 0 for the 13th conv
    convs = sorted((u for u in graph.units if u.name.startswith("features.")), key=lambda u: int(u.name.split(".")[1]))
    assert [u.width for u in convs] == dense
    assert [widths[u.name] for u in convs] == [int(c * (1 - r)) for c, r in zip(dense, rates)]
    assert widths["classifier.0"] == 512


def test_stem_must_match_stage_one_or_be_zero():
    _, zero = ratio_widths("resnet20", "[0.]+[0.25]*2+[0.5]*9")
    _, same = ratio_widths("resnet20", "[0.25]*3+[0.5]*9")
    assert zero == same and zero["conv1"] == 12
    with pytest.raises(ConfigError, match="stem ratio 0.1 differs from stage 1's 0.25"):
        ratio_widths("resnet20", "[0.1]+[0.25]*2+[0.5]*9")
    with pytest.raises(ConfigError, match="stem ratio 0.1 differs from stage 1's 0.0"):
        ratio_widths("resnet20", "[0.1]+[0.]*2+[0.5]*9")


@pytest.mark.parametrize("name,spec,needle", [
    ("resnet56", "[0.]+[0.15]*2+[0.4]*26", "takes 30 ratios in the paper's layout, got 29"),
    ("resnet20", R56, "takes 12 ratios"),
    ("vgg16_bn", "[0.2]*13", "takes 12 ratios"),
    ("mobilenetv2", "[0.1]", "not MobileNetV2; give a budget instead"),
    ("resnet20", "[0.]+[0.]*2+[0.99]*9", "keeps 0 of layer1.0.conv1's 16 channels"),
])
def test_mapping_refuses(name, spec, needle):
    with pytest.raises(ConfigError, match=needle):
        ratio_widths(name, spec)


def test_an_ignored_layer_cannot_take_a_ratio():
    spec = "[0.]+[0.]*2+[0.5]*9"
    with pytest.raises(ConfigError, match="prunes layer1.0.conv1, which is protected or ignored"):
        ratio_widths("resnet20", spec, ignore=("layer1.0.conv1",))
    _, widths = ratio_widths("resnet20", "[0.]+[0.]*2+[0.]+[0.5]*8", ignore=("layer1.0.conv1",))
    assert "layer1.0.conv1" not in widths and widths["layer1.1.conv1"] == 8


def test_compress_with_ratios_and_the_budget_as_a_ceiling():
    model, x = create_model("resnet20").eval(), torch.zeros(1, 3, 16, 16)
    spec = "[0.]+[0.25]*2+[0.5]*9"
    r = compress(model, x, 1.0, method="l1+ratios", options={"ratios": spec})
    kept = r.summary["macs"]["pruned"] / r.summary["macs"]["dense"]
    assert r.plan.widths["layer2.0.conv1"] == 16 and r.plan.widths["layer2.0.shortcut.0"] == 24
    assert r.summary["signals"]["ratios"]["spec"] == spec
    same = compress(model, x, kept + 0.001, method="l1+ratios", options={"ratios": spec})
    assert same.plan.widths == r.plan.widths  # a budget the ratios meet changes nothing
    with pytest.raises(BudgetError, match="above the budget's"):
        compress(model, x, kept - 0.01, method="l1+ratios", options={"ratios": spec})
    with pytest.raises(ConfigError, match="needs ratios="):
        compress(model, x, 1.0, method="l1+ratios")


def test_cli_ratios_without_a_budget(capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["compress", "--model", "resnet20", "--input-size", "16", "--method", "l1", "--no-eval", "--json",
                 "--ratios", "[0.]+[0.25]*2+[0.5]*9", "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["method"]["name"] == "l1+ratios"
    assert {u["name"]: u["kept"] for u in summary["units"]}["layer3.2.conv1"] == 32


def test_cli_chip_with_the_paper_ratios_and_faithful_ranking(capsys, tmp_path):
    """The README's CHIP command: --method chip keeps its criterion, options reach both parts."""
    code = main(["compress", "--model", "resnet20", "--dataset", "synthetic", "--method", "chip", "--no-eval", "--json",
                 "--ratios", "[0.]+[0.25]*2+[0.5]*9", "--option", "faithful=1", "--calibration-batches", "1",
                 "--out", str(tmp_path / "out")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["method"]["name"] == "chip+ratios"
    assert summary["signals"]["chip_stream_ranking"].endswith("(faithful)")
    assert summary["signals"]["ratios"]["units"]["layer1.0.conv1"] == 0.5


@pytest.mark.parametrize("argv,needle", [
    (["--ratios", "[0.]+[0.25]*2+[0.5]*8"], "takes 12 ratios"),
    (["--ratios", "[0.]+[0.25]*2+[1.5]*9"], "outside [0, 1)"),
    (["--ratios", "[0.]+[0.25]*2+[0.5]*9", "--budget", "flops=0.3"], "above the budget's"),
    ([], "needs --budget (e.g. flops=0.5) or --ratios"),
])
def test_cli_refuses_bad_ratios_in_one_line(capsys, tmp_path, argv, needle):
    out = tmp_path / "out"
    code = main(["compress", "--model", "resnet20", "--input-size", "16", "--no-eval", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("prunekit: error:")]) == 1
    assert not out.exists()
