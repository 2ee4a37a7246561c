from pathlib import Path

import pytest
import torch

from fastresnet.model import CustomResNet


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


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        CustomResNet()(torch.randn(3, 32, 32))


def test_bn_momentum_from_the_recipe_weights_each_new_batch_in_the_running_statistics(arrays, tmp_path):
    from fastresnet.config import Recipe
    from fastresnet.data import recipe_dls
    from fastresnet.learner import build_learner
    for m in (0.1, 0.4):
        r = Recipe(bs=10, bn_momentum=m)
        model = build_learner(recipe_dls(arrays, r), r, tmp_path).model.train()
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


def test_named_layers():
    m = CustomResNet()
    assert [n for n, _ in m.named_children()] == ["prep", "layer1", "layer2", "layer3", "pool", "gap", "flatten", "fc"]


def test_weights_with_positional_keys_are_refused_naming_the_version_that_reads_them(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from fastresnet.config import Recipe, UserError
    from fastresnet.learner import load_weights_learner, save_weights, stub_learner
    new = tmp_path / "new.safetensors"
    save_weights(stub_learner(list("abcdefghij"), Recipe(width=0.25)), new)
    with safe_open(new, framework="pt") as f: meta = f.metadata()
    old = tmp_path / "old.safetensors"   # the same weights under positional keys (`1.1.res.0.0.weight` and so on)
    save_file({f"{i}.{k}": v for i, (k, v) in enumerate(load_file(new).items())}, old, metadata=meta)
    assert load_weights_learner(new).model.width == 0.25
    with pytest.raises(UserError, match="old.safetensors holds a model saved before fastresnet named its layers"
                                          r".*fastresnet 0\.1 reads it"):
        load_weights_learner(old)


def test_a_learner_pickled_before_the_layers_had_names_is_refused_naming_the_version_that_reads_it():
    "Rebuild the old positional layout by hand, pickle it, and unpickle it into today's class."
    import pickle
    from collections import OrderedDict
    from fastresnet.config import UserError
    m = CustomResNet()
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
    assert list(m._modules) == [str(i) for i in range(8)] and "1.1.res.0.0.weight" in m.state_dict()
    with pytest.raises(UserError, match=r"This learner holds a model saved before.*fastresnet 0\.1 reads it"):
        pickle.loads(pickle.dumps(m))
    assert pickle.loads(pickle.dumps(CustomResNet(width=0.5))).width == 0.5   # today's layout unpickles


def test_a_learner_exported_by_0_1_loads_and_predicts_as_it_did(tmp_path):
    """tests/data/learner-0.1.pkl: a width-0.03125 learner exported by fastresnet 0.1 (its callbacks pickled as
    fastresnet.learner.*); the probabilities are what 0.1's `load_learner(...).predict` gave for this image."""
    import numpy as np
    from fastai.learner import load_learner
    from PIL import Image
    img = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 7 % 256).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    learn = load_learner(Path(__file__).parent / "data" / "learner-0.1.pkl")
    with learn.no_bar(): label, _, probs = learn.predict(tmp_path / "x.png")
    assert label == "g"
    assert probs.tolist() == pytest.approx([0.077866, 0.104719, 0.11205, 0.110999, 0.099549, 0.094843, 0.113127,
                                            0.075558, 0.098833, 0.112455], abs=2e-6)


def test_a_0_1_network_pickled_with_another_logit_scale_is_refused():
    "0.1 multiplied the logits by `logit_scale`; 0.2 has no such step, so only the settled 1.0 may load."
    import pickle
    from fastresnet.config import UserError
    m = CustomResNet(width=0.25)
    m.logit_scale = 1.0                                                  # as every 0.1 network carried it
    assert "logit_scale" not in vars(pickle.loads(pickle.dumps(m)))
    m.logit_scale = 0.125
    with pytest.raises(UserError, match="`logit_scale = 0.125` is a setting of fastresnet 0.1"):
        pickle.loads(pickle.dumps(m))


def test_the_names_of_0_3_still_import_and_warn_with_the_new_name():
    "Scripts and exported learners of 0.3 and before name `CifarArrays`, `cifar_learner`...: the same objects now."
    import fastresnet
    import fastresnet.data as data
    with pytest.warns(DeprecationWarning, match="`CifarArrays` is now `ImageArrays`"):
        from fastresnet.data import CifarArrays
    assert CifarArrays is data.ImageArrays
    with pytest.warns(DeprecationWarning, match="`cifar_learner` is now `recipe_learner`"):
        assert fastresnet.cifar_learner is fastresnet.recipe_learner
    with pytest.raises(AttributeError, match="no attribute 'CifarNothing'"):
        data.CifarNothing
