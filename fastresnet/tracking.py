"""TensorBoard logging of a run (`tensorboard = true`, `--tensorboard`) through fastai's `TensorBoardCallback`: event
files in the run folder itself, so `tensorboard --logdir runs` shows every run under its folder's name.

Needs the optional extra: pip install "fastresnet[tensorboard]". Importing this module without it raises the
`UserError` that says so, which the run meets before it loads any data.
"""
from __future__ import annotations

from pathlib import Path

from fastai.torch_core import rank_distrib

from .config import UserError

try:
    from fastai.callback.tensorboard import TensorBoardCallback
    from torch.utils.tensorboard import SummaryWriter
except ImportError as e:
    raise UserError(f"tensorboard = true (--tensorboard) needs TensorBoard, which is not installed here ({e}); the "
                    'optional extra brings it: pip install "fastresnet[tensorboard]" (in a clone: pip install -e '
                    '".[tensorboard]").') from None

__all__ = ["TensorBoardLog", "STEP_TAGS"]

STEP_TAGS = ("train_loss", "lr", "mom")  # after every training step; each epoch's metrics after its last step


class TensorBoardLog(TensorBoardCallback):
    """fastai's `TensorBoardCallback` on the run's one step axis: `train_loss` (fastai's smoothed loss, the
    figure metrics.json keeps at each epoch's end), `lr` and `mom` (beta1) after every training step, and the
    epoch's `train_accuracy`, `valid_loss` and `valid_accuracy` at its last step. Steps count from the run's
    first (1) across fastai's fine_tune's two fits and a resume; a resumed run's writer purges what the
    stopped one wrote past its last checkpoint (TensorBoard's `purge_step`), so each curve goes on with no
    step twice."""
    def __init__(self, run_dir: str | Path):
        super().__init__(log_dir=str(run_dir), trace_model=False, log_preds=False)
        self.writer = None

    def before_fit(self):  # fastai's writer is made here; ours at the first step, which it needs to know
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds") and rank_distrib() == 0
        self.writer = None

    def after_batch(self):
        if not (self.run and self.training):
            return
        epoch = getattr(self.learn, "epoch_offset", 0) + self.epoch  # the run's, whichever of fine_tune's fits this is
        self.step = step = epoch * self.n_iter + self.iter + 1
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=step)
        hp = self.opt.hypers[-1]  # the head's group: the LR schedule.json records
        for tag, v in zip(STEP_TAGS, (self.smooth_loss, hp["lr"], hp["mom"])):
            self.writer.add_scalar(tag, v, step)
        self.writer.flush()  # a stopped or killed run's curves end at its last step, not at the writer's last flush

    def after_epoch(self):
        if self.writer is None:
            return  # an epoch a resumed fit skips (fastai's SkipToEpoch), or not rank 0
        rec, step = self.recorder, self.step  # the epoch's last training step
        values = list(rec.log[1:-1])  # between the epoch number and the time; no test figures when that pass skipped
        for name in rec.metric_names[1:-1]:
            if rec.cancel_valid and name.startswith("valid_"):
                continue
            v = values.pop(0)
            if name != "train_loss":
                self.writer.add_scalar(name, v, step)
        self.writer.flush()  # on disk before the epoch's checkpoint: what a resume continues from is in the file

    def after_fit(self):
        if self.writer is not None:
            self.writer.close()
        self.writer = None
