"""Taking a trained model elsewhere (issue 47): the network through torch.export, the ONNX file run by onnxruntime
alone (no torch, no fastai) against `fastresnet predict`, the README's onnxruntime snippet run as written, and the
Hub folder loaded by the real commands."""
import copy

import pytest
import torch
from fastai.vision.core import TensorImage

from conftest import make_arrays
from fastresnet.config import Recipe
from fastresnet.data import cifar_dls
from fastresnet.learner import build_learner
from fastresnet.model import CustomResNet


@pytest.mark.parametrize("training", [False, True])
def test_torch_export_takes_the_network_in_eval_and_train_mode(training):
    torch.manual_seed(0)
    net = CustomResNet(width=0.25).train(training)
    x = torch.randn(4, 3, 32, 32)
    twin = copy.deepcopy(net)  # train mode updates BatchNorm's running statistics: each copy runs once
    program = torch.export.export(net, (x,))
    assert torch.allclose(program.module()(x), twin(x), atol=1e-5)


def test_the_learners_model_gets_plain_tensors_and_its_inputs_keep_fastais_type():
    "The cast the network no longer makes is fastai's CastToTensor's, on every path a Learner calls the model."
    seen = []
    learn = build_learner(cifar_dls(make_arrays(), Recipe(bs=10)), Recipe(bs=10, width=0.25, precision="fp32"))
    learn.model.register_forward_pre_hook(lambda m, args: seen.append(type(args[0])))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    inputs, _, _ = learn.get_preds(with_input=True)
    assert seen and set(seen) == {torch.Tensor}  # training and the test pass: no TensorImage in the forward pass
    assert isinstance(inputs, TensorImage)       # what fastai's top losses and show_results read
