"""Layer 2: the HRN network."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from hrn import HRN, Hierarchy
from hrn.nets import TRUNKS, ModelError, build_trunk


def cub_like_tree() -> Hierarchy:
    """13 orders -> 38 families -> 200 species, the sizes of the paper's CUB tree."""
    edges = [(f"order{i % 13}", f"family{i}") for i in range(38)]
    edges += [(f"family{i % 38}", f"species{i}") for i in range(200)]
    return Hierarchy.from_edges(edges)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_cub_parameter_count_equals_the_authors_model():
    # Derived from design §2 (the authors' HIFD2 model), C = 2048, F = 1024, D = 512:
    #   trunk  ResNet-50 without fc: 25,557,032 - (2048·1000 + 1000)                         = 23,508,032
    #   GSB    conv1x1 2048·1024 + BN 2·1024 + conv3x3 1024·2048·9 + BN 2·2048 = 20,977,664, ×3 = 62,932,992
    #   proj   BN 2·2048 + Linear 2048·1024+1024 + BN 2·1024 + Linear 1024·512+512
    #          = 4,096 + 2,098,176 + 2,048 + 524,800 = 2,629,120, ×3                        =  7,887,360
    #   heads  513·13 + 513·38 + 513·200 (sigmoid) + 513·200 (leaf softmax)                 =    231,363
    #   total                                                                                = 94,559,747
    net = HRN(cub_like_tree(), trunk="resnet50")
    assert count(net.trunk) == 23_508_032
    assert count(net.gsbs) == 3 * 20_977_664
    assert count(net.projections) == 3 * 2_629_120
    assert count(net.heads) + count(net.leaf_head) == 231_363
    assert count(net) == 94_559_747


def small_tree() -> Hierarchy:
    return Hierarchy.from_edges(
        [("a", "b"), ("a", "c"), ("b", "d"), ("b", "e"), ("c", "f"), ("x", "y"), ("y", "z")]
    )


VARIANTS = [
    {},
    {"gsb": False},
    {"combine": "concat"},
    {"combine": "none"},
    {"relu": False},
    {"channels_last": True},
    {"trunk": "resnet34", "width": 64},
]


@pytest.mark.parametrize(
    "kwargs", VARIANTS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "paper"
)
def test_every_variant_gives_shapes_without_nans(kwargs):
    h = small_tree()
    kwargs = {"trunk": "resnet18", "width": 32, "dim": 16, **kwargs}
    channels_last = kwargs.pop("channels_last", False)  # the LightningModule's switch: network and batches
    net = HRN(h, **kwargs)
    images = torch.randn(2, 3, 64, 64)
    if channels_last:
        net, images = (
            net.to(memory_format=torch.channels_last),
            images.contiguous(memory_format=torch.channels_last),
        )
    out = net(images)
    assert [t.shape for t in out.level_probs] == [(2, n) for n in h.level_sizes]
    assert out.leaf_logits.shape == (2, h.level_sizes[-1])
    assert out.scores().shape == (2, h.num_nodes)
    assert all(((t > 0) & (t < 1)).all() for t in out.level_probs)
    assert all(torch.isfinite(t).all() for t in [*out.level_logits, out.leaf_logits])


def test_residual_sum_and_relu_follow_the_spec():
    """z_l = ReLU(h_1 + ... + h_l): check the head input against the projections' outputs by hand."""
    h = small_tree()
    net = HRN(h, trunk="resnet18", width=32, dim=16).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = net.forward_features(x)  # the trunk's map, as timm's forward_features
    torch.testing.assert_close(feats, net.trunk(x))
    assert feats.shape == (2, 512, 2, 2)
    z = net.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(z[1], net.level_features(feats)[1])
    hs = [proj(net.pool(gsb(feats)).flatten(1)) for gsb, proj in zip(net.gsbs, net.projections, strict=True)]
    torch.testing.assert_close(z[0], hs[0].relu())
    torch.testing.assert_close(z[2], (hs[0] + hs[1] + hs[2]).relu())
    out = net.forward_head(feats)
    torch.testing.assert_close(out.leaf_logits, net(x).leaf_logits)
    torch.testing.assert_close(out.leaf_logits, net.leaf_head(z[2]))
    torch.testing.assert_close(out.level_probs[1], net.heads[1](z[1]).sigmoid())


def test_concat_widens_the_heads():
    net = HRN(small_tree(), trunk="resnet18", width=32, dim=16, combine="concat")
    assert [head.in_features for head in net.heads] == [16, 32, 48]
    assert net.leaf_head.in_features == 48


def test_param_groups_split_trunk_with_10x_smaller_lr():
    net = HRN(small_tree(), trunk="resnet18", width=32, dim=16)
    groups = net.param_groups()
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]
    assert sum(p.numel() for g in groups for p in g["params"]) == count(net)
    assert sum(p.numel() for p in groups[0]["params"]) == count(net.trunk)


def test_unknown_trunk_lists_valid_ones():
    with pytest.raises(ModelError, match="unknown trunk 'vgg16'; valid trunks: resnet18, resnet34, resnet50"):
        HRN(small_tree(), trunk="vgg16")


def test_weights_file_loads_into_the_trunk(tmp_path):
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    trunk = build_trunk("resnet18", weights=tmp_path / "r18.pth")
    torch.testing.assert_close(trunk.module[0].weight, ref.conv1.weight)
    with pytest.raises(ModelError, match="file not found"):
        build_trunk("resnet18", weights=tmp_path / "missing.pth")
    save_file(ref.state_dict(), tmp_path / "r18.safetensors")  # the weights-only format loads the same
    torch.testing.assert_close(
        build_trunk("resnet18", weights=tmp_path / "r18.safetensors").module[0].weight, ref.conv1.weight
    )
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="not a torchvision resnet18 state dict"):
        build_trunk("resnet18", weights=tmp_path / "bad.pth")


def test_pretrained_loads_imagenet_weights(monkeypatch):
    """pretrained=True asks torchvision for IMAGENET1K_V1 (intercepted here: the machine is offline)."""
    asked = []
    ref = torchvision.models.resnet18().state_dict()

    def fake_get_state_dict(self, *args, **kwargs):
        asked.append(self)
        return ref

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    trunk = build_trunk("resnet18", pretrained=True)
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    torch.testing.assert_close(trunk.module[0].weight, ref["conv1.weight"])


def test_pretrained_offline_says_how_to_fix(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelError, match="model.weights=/path/to/resnet50.pth .* or model.pretrained=false"):
        build_trunk("resnet50", pretrained=True)


def test_every_torchvision_trunk_says_the_channels_of_the_map_it_gives():
    # the map itself is the oracle: C read off the model must be what the GSBs receive (512 for the basic-block
    # ResNets, 2048 for the bottleneck ones, as in the ResNet paper's table 1)
    expected = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
    assert set(TRUNKS) == set(expected)
    for name in TRUNKS:
        trunk = build_trunk(name)
        with torch.no_grad():
            out = trunk.module.eval()(torch.zeros(1, 3, 64, 64))
        assert trunk.channels == out.shape[1] == expected[name], name


def test_scores_of_the_leaf_source_are_refused():
    """The leaf softmax is no per-node tree score: asking an output for "leaf" scores is an error, not logits."""
    from hrn.nets.output import LeafScoresError

    out = HRN(small_tree(), trunk="resnet18", width=8, dim=8).eval()(torch.randn(2, 3, 32, 32))
    assert out.scores("sigmoid").shape == out.scores("logits").shape == (2, small_tree().num_nodes)
    with pytest.raises(LeafScoresError, match="node_probabilities"):
        out.scores("leaf")
