"""Test-time augmentation, checked against its definition on known inputs: a shift moves the picture one pixel with
the edge reflected in, flip-TTA is the mean softmax of the image and its mirror, and multi-crop TTA of six views
(shifts -1, 0, +1, each plain and mirrored)."""
import pytest
import torch

from fastresnet.config import Recipe
from fastresnet.data import ImageArrays, recipe_dls
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


class HandMade(torch.nn.Module):
    """A classifier whose answer is known by hand: three features of the normalised image, L (channel 0's mean over
    the left half), R (over the right half) and C (channel 1's mean over column 16), weighed into the first three of
    ten logits; the other seven are 0."""
    W = torch.tensor([[-0.5, 1.0, 2.0], [-1.0, 0.5, -0.5], [1.0, 0.5, -2.0]])
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(self.W.clone(), requires_grad=False)   # fastai finds the device by a parameter

    def forward(self, x):
        x = x.as_subclass(torch.Tensor).float()
        f = torch.stack([x[:, 0, :, :16].mean((1, 2)), x[:, 0, :, 16:].mean((1, 2)), x[:, 1, :, 16].mean(1)], 1)
        return torch.cat([f @ self.w.T, torch.zeros(len(x), 7)], 1)


def test_flip_and_multi_crop_tta_give_the_known_answers_of_a_hand_made_model(tmp_path):
    """Every test image: channel 0 white on the left half, black on the right; channel 1 black but for a white
    column 16. Normalised with mean 0.5 and std 0.25, white is 2 and black -2. So, by hand, each view's (L, R, C):
      plain (2, -2, 2); mirrored (-2, 2, -2) (column 16 of the mirror is column 15: black);
      shift +1 (right and down, column 0 reflected from column 1): (2, (2 - 15 * 2) / 16, -2), mirrored: L and R swap,
      C is the shifted column 15 (the old 14): -2; shift -1: ((15 * 2 - 2) / 16, -2, -2), mirrored: swapped, and C the
      shifted column 15 (the old 16): 2. The logits W (L, R, C): plain picks class 0, flip-TTA (mean of two softmaxes)
      class 1, multi-crop TTA (mean of six) class 2, each by a margin of at least 0.17 in probability. With labels
      2 x class 0, 3 x class 1, 5 x class 2, the accuracies must be 0.2, 0.3 and 0.5."""
    imgs = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    imgs[:, 0, :, :16] = 255
    imgs[:, 1, :, 16] = 255
    labels = torch.tensor([0] * 2 + [1] * 3 + [2] * 5)
    from conftest import make_arrays
    train = make_arrays(20, 0)
    data = ImageArrays(torch.cat([train.images, imgs]), torch.cat([train.labels, labels]), train.vocab, 20,
                       stats=([0.5] * 3, [0.25] * 3))
    r = Recipe(bs=10, width=0.25, precision="fp32")
    learn = build_learner(recipe_dls(data, r), r, tmp_path)
    learn.model = HandMade()
    with learn.no_bar(): res, _ = evaluate_learner(learn, tta=True, crops=True)
    w, s = 2.0, -2.0
    views = {(0, 0): (w, s, w), (0, 1): (s, w, s), (1, 0): (w, (w + 15 * s) / 16, s), (1, 1): ((w + 15 * s) / 16, w, s),
             (-1, 0): ((15 * w + s) / 16, s, s), (-1, 1): (s, (15 * w + s) / 16, w)}
    prob = {v: torch.cat([HandMade.W @ torch.tensor(f), torch.zeros(7)]).softmax(0) for v, f in views.items()}
    plain, flip, crops = prob[0, 0], (prob[0, 0] + prob[0, 1]) / 2, torch.stack(list(prob.values())).mean(0)
    assert [int(p.argmax()) for p in (plain, flip, crops)] == [0, 1, 2]     # the answers differ: the test can fail
    assert (res["accuracy"], res["accuracy_tta"], res["accuracy_tta_crops"]) == pytest.approx((0.2, 0.3, 0.5))
    assert res["n_images"] == 10 and res["confusion"][2] == [5, 0, 0] + [0] * 7   # plain: every image as class 0


def test_flip_tta_answers_the_mean_of_the_two_softmaxes_image_by_image(tmp_path):
    """An untrained network's plain, mirrored and mean-of-both answers on 200 images, computed here from its
    logits; the images labelled with the mean's answers, so flip-TTA must score 100% and the plain view what it
    gets right of them (the mirror alone, or the plain view, would score less: checked before)."""
    from conftest import make_arrays
    r = Recipe(bs=50, width=0.25, precision="fp32")
    data = make_arrays(20, 200)
    learn = build_learner(recipe_dls(data, r), r, tmp_path)
    learn.model.eval()
    with torch.no_grad():
        xs = torch.cat([xb.as_subclass(torch.Tensor) for xb, _ in learn.dls.valid])
        plain, mirror = learn.model(xs).softmax(1), learn.model(xs.flip(-1)).softmax(1)
    want = ((plain + mirror) / 2).argmax(1)
    assert want.ne(mirror.argmax(1)).any() and want.ne(plain.argmax(1)).any()   # the rule's answer stands apart
    labelled = ImageArrays(data.images, torch.cat([data.labels[:20], want]), data.vocab, 20)
    again = build_learner(recipe_dls(labelled, r), r, tmp_path)
    again.model = learn.model
    with again.no_bar(): res, _ = evaluate_learner(again, tta=True)
    assert res["accuracy_tta"] == 1.0
    assert res["accuracy"] == pytest.approx(float(plain.argmax(1).eq(want).float().mean()))
