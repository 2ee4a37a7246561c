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
    assert (out < 0).any()                                    # probabilities are never negative
    assert not torch.allclose(out.sum(1), torch.ones(8))      # nor sum to one
    assert not any(isinstance(x, (torch.nn.Softmax, torch.nn.LogSoftmax)) for x in m.modules())


def test_residual_adds_identity():
    m = CustomResNet().eval()
    res = m[1][1]
    x = torch.randn(1, 128, 16, 16)
    assert torch.allclose(res(x), x + res.res(x))


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
