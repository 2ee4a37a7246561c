import pytest
import torch

from fastresnet.model import CustomResNet, Residual


def test_parameter_count():
    # bias-free convs (BN follows each) + BN affine + biased FC: 6,563,520 + 4,480 + 5,130
    assert sum(p.numel() for p in CustomResNet().parameters()) == 6_573_130


def test_every_conv_sees_the_spec_spatial_size():
    m, sizes = CustomResNet(), []
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[-1]))
    m.eval()(torch.randn(2, 3, 32, 32))
    assert sizes == [32, 32, 16, 16, 16, 8, 4, 4]


def test_channels_in_order():
    outs = [c.out_channels for c in CustomResNet().modules() if isinstance(c, torch.nn.Conv2d)]
    assert outs == [64, 128, 128, 128, 256, 512, 512, 512]


def test_output_is_logits_not_probabilities():
    torch.manual_seed(0)
    m = CustomResNet().eval()
    out = m(torch.randn(8, 3, 32, 32))
    assert out.shape == (8, 10)
    assert not torch.allclose(out.sum(1), torch.ones(8))      # nor sum to one
    assert not any(isinstance(x, (torch.nn.Softmax, torch.nn.LogSoftmax)) for x in m.modules())


def test_residual_adds_identity():
    m = CustomResNet().eval()
    res = m.layer1.res
    x = torch.randn(1, 128, 16, 16)
    assert torch.allclose(res(x), x + res.branch(x))


def test_logit_scale_multiplies():
    torch.manual_seed(0)
    a = CustomResNet().eval()
    b = CustomResNet(logit_scale=0.125).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(a(x) * 0.125, b(x), atol=1e-6)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        CustomResNet()(torch.randn(3, 32, 32))


def test_zero_init_residual_makes_blocks_identities():
    torch.manual_seed(0)
    m = CustomResNet(zero_init_residual=True).train()
    blocks = [mod for mod in m.modules() if isinstance(mod, Residual)]
    assert len(blocks) == 2
    for block in blocks:
        x = torch.randn(4, block.branch.a.conv.in_channels, 8, 8)
        assert torch.equal(block(x), x)  # branch output is exactly 0 in train mode too
    zeroed = [n for n, p in m.named_parameters() if n.endswith("weight") and p.ndim == 1 and not p.any()]
    assert zeroed == ["layer1.res.branch.b.bn.weight", "layer3.res.branch.b.bn.weight"]
    plain = CustomResNet().train().layer1.res  # the default (spec) init: the branch adds something
    x = torch.randn(4, 128, 8, 8)
    assert not torch.equal(plain(x), x)


def test_learner_takes_zero_init_residual_from_the_recipe(arrays, tmp_path):
    from fastresnet.config import Recipe
    from fastresnet.data import cifar_dls
    from fastresnet.learner import build_learner
    for flag in (False, True):
        r = Recipe(bs=10, zero_init_residual=flag)
        bn = build_learner(cifar_dls(arrays, r), r, tmp_path).model.layer3.res.branch.b.bn
        assert bool((bn.weight == 0).all()) is flag


def test_bn_momentum_from_the_recipe_weights_each_new_batch_in_the_running_statistics(arrays, tmp_path):
    from fastresnet.config import Recipe
    from fastresnet.data import cifar_dls
    from fastresnet.learner import build_learner
    for m in (0.1, 0.4):
        r = Recipe(bs=10, bn_momentum=m)
        model = build_learner(cifar_dls(arrays, r), r, tmp_path).model.train()
        bns = [mod for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
        assert len(bns) == 8
        x = torch.randn(6, 3, 32, 32) * 2 + 1
        conv_out = model.prep.conv(x)
        model(x)  # one training batch: running_mean = (1 - m) * 0 + m * batch mean (torch's convention)
        expected = m * conv_out.mean(dim=(0, 2, 3))
        assert torch.allclose(model.prep.bn.running_mean, expected, atol=1e-5)
        assert torch.allclose(model.prep.bn.running_var, (1 - m) * 1 + m * conv_out.var(dim=(0, 2, 3)), atol=1e-4)


@pytest.mark.parametrize("width, outs", [(0.25, [16, 32, 32, 32, 64, 128, 128, 128]),
                                         (0.5, [32, 64, 64, 64, 128, 256, 256, 256])])
def test_width_scales_every_channel_count(width, outs):
    m = CustomResNet(width=width)
    assert [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)] == outs
    assert m[-1].in_features == outs[-1] and m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # convolution multiply-adds scale with width² (each conv: c_in·c_out·9 per output pixel)
    def conv_weights(model):
        return sum(c.weight.numel() for c in model.modules() if isinstance(c, torch.nn.Conv2d) and c.in_channels > 3)
    full, small = conv_weights(CustomResNet()), conv_weights(m)
    assert small / full == pytest.approx(width ** 2)


def test_named_layers_and_weights_saved_with_positional_keys():
    m = CustomResNet()
    assert [n for n, _ in m.named_children()] == ["prep", "layer1", "layer2", "layer3", "pool", "gap", "flatten", "fc"]
    old = {f"k{i}": v for i, v in enumerate(m.state_dict().values())}   # same order, positional-style names
    old = {k.replace("k", "0.", 1): v for k, v in old.items()}
    from fastresnet.legacy import named_state_dict                      # what the weights loader calls
    fresh = CustomResNet()
    fresh.load_state_dict(named_state_dict(old, fresh))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), m.state_dict().values()))
    with pytest.raises(RuntimeError, match="do not line up"):
        named_state_dict(old, CustomResNet(width=0.5))


def test_a_learner_pickled_before_the_layers_had_names_still_loads():
    "Rebuild the old positional layout by hand, pickle it, and unpickle it into today's class."
    import pickle
    from collections import OrderedDict
    torch.manual_seed(0)
    m = CustomResNet().eval()
    x = torch.randn(2, 3, 32, 32)
    expected = m(x)
    def positional(seq): seq._modules = OrderedDict((str(i), c) for i, c in enumerate(seq._modules.values()))
    for layer in (m.layer1, m.layer3):
        res = layer.res
        res._modules = OrderedDict(res=res._modules.pop("branch"))
        for block in res.res: positional(block)
        positional(res.res)
        positional(layer.conv)
        positional(layer)
    for block in (m.prep, m.layer2): positional(block)
    positional(m)
    del m.__dict__["width"]
    assert list(m._modules) == [str(i) for i in range(8)] and "1.1.res.0.0.weight" in m.state_dict()
    old = pickle.loads(pickle.dumps(m))
    assert list(old._modules)[0] == "prep" and "layer1.res.branch.a.conv.weight" in old.state_dict()
    assert old.width == 1.0 and torch.equal(old.eval()(x), expected)
