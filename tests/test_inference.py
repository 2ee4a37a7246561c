"""Test-time augmentation, checked against its definition on known inputs: a shift moves the picture one pixel with
the edge reflected in, flip-TTA is the mean softmax of the image and its mirror, and multi-crop TTA of six views
(shifts -1, 0, +1, each plain and mirrored)."""
import pytest
import torch

from fastresnet.config import Recipe
from fastresnet.data import cifar_dls
from fastresnet.inference import SHIFTS, TTAView, evaluate_learner
from fastresnet.learner import build_learner


def test_a_shift_moves_the_picture_and_reflects_the_edge_in():
    x = torch.arange(9.).view(1, 1, 3, 3)                       # rows 0 1 2 / 3 4 5 / 6 7 8
    class Fake: xb = (x,)
    def shifted(d, flip=False):
        cb = TTAView(d, flip)
        cb.learn = Fake()
        cb.before_batch()
        return cb.learn.xb[0][0, 0].tolist()
    assert shifted(0) == x[0, 0].tolist()
    assert shifted(1) == [[4, 3, 4], [1, 0, 1], [4, 3, 4]]    # right and down by one: row/column -1 mirror 1
    assert shifted(-1) == [[4, 5, 4], [7, 8, 7], [4, 5, 4]]
    assert shifted(-1, flip=True) == [row[::-1] for row in shifted(-1)] and shifted(0, True)[0] == [2, 1, 0]


def test_multi_crop_tta_is_the_mean_softmax_of_six_views(arrays, tmp_path):
    r = Recipe(bs=10, width=0.25)
    learn = build_learner(cifar_dls(arrays, r), r, tmp_path)
    learn.fit(1, 1e-3)
    res, _ = evaluate_learner(learn, tta=True, crops=True)
    xs, ys = zip(*[(x, y) for x, y in learn.dls.valid])
    x, y = torch.cat(xs).as_subclass(torch.Tensor), torch.cat(ys).as_subclass(torch.Tensor)
    learn.model.eval()
    def view(d, flip):
        a = abs(d)
        v = torch.nn.functional.pad(x, (a,) * 4, mode="reflect")[..., a - d:a - d + 32, a - d:a - d + 32] if d else x
        with torch.no_grad(): return learn.model(v.flip(-1) if flip else v).softmax(-1)
    probs = torch.stack([view(d, f) for d in SHIFTS for f in (False, True)]).mean(0)
    assert res["accuracy_tta_crops"] == pytest.approx(float(probs.argmax(1).eq(y).float().mean()))
    flip = (view(0, False) + view(0, True)) / 2                                  # flip-TTA: the image and its mirror
    assert res["accuracy_tta"] == pytest.approx(float(flip.argmax(1).eq(y).float().mean()))
    assert res["accuracy"] == pytest.approx(float(view(0, False).argmax(1).eq(y).float().mean()))
