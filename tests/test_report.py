"""report.py: what a run folder's report says. Here: the warning when a test pass learned nothing usable."""
import json

import numpy as np

from fastresnet.report import chance_note, write_report


def final_of(counts, vocab=None) -> dict:
    "A test pass's final.json from its confusion matrix (rows: actual, columns: predicted)."
    counts = np.asarray(counts)
    vocab = vocab or [f"c{i}" for i in range(len(counts))]
    return {"accuracy": float(np.trace(counts) / counts.sum()), "n_images": int(counts.sum()), "vocab": vocab,
            "confusion": counts.tolist(), "per_class": {c: 0.0 for c in vocab}}


def test_one_class_for_every_image_is_named_with_its_share():
    counts = np.zeros((10, 10), int)
    counts[:, 3] = 10                                        # every image predicted as class 3: 10% accuracy
    note = chance_note(final_of(counts), n_train=40, epochs=2)
    assert note.startswith("The model predicts 'c3' for 100% of the test images: test accuracy 10.0%.")
    assert "(40 training images, 2 epochs)" in note and "BatchNorm" in note and "--lr-max" in note


def test_accuracy_within_five_points_of_guessing_is_at_chance_and_above_it_is_not():
    def spread(k, right, n=100):  # `right` of n correct per class, the rest spread over two other classes
        c = np.zeros((k, k), int)
        for i in range(k): c[i, i], c[i, (i + 1) % k], c[i, (i + 2) % k] = right, (n - right) // 2, (n - right) // 2
        return c
    assert "is at chance (guessing gives 10.0%): test accuracy 14.0%" in chance_note(final_of(spread(10, 14)))
    assert chance_note(final_of(spread(10, 16))) is None    # 16% > 10% + 5 points
    two = final_of([[54, 46], [46, 54]])                      # 2 classes: guessing gives 50%
    assert "at chance (guessing gives 50.0%)" in chance_note(two)
    assert chance_note(final_of([[56, 44], [44, 56]])) is None


def test_the_report_carries_the_warning_and_a_good_run_has_none(tmp_path):
    counts = np.zeros((10, 10), int)
    counts[:, 0] = 2
    (tmp_path / "final.json").write_text(json.dumps(final_of(counts)))
    assert "> **Warning.** The model predicts 'c0' for 100%" in write_report(tmp_path).read_text()
    (tmp_path / "final.json").write_text(json.dumps(final_of(np.diag(np.full(10, 9)) + 1)))
    assert "Warning" not in write_report(tmp_path).read_text()
