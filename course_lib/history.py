"""``History``: what a training run measured (chapter 3), in its own module.

``train`` returns a ``History``; ``checkpoint.load_checkpoint`` fills one back from a file.
Kept apart from both, so that the training loop can import the checkpoint code and the
checkpoint code can build a ``History`` without either importing the other.

    >>> h = History(steps=[0, 100], train_loss=[4.2, 2.1], valid_loss=[4.2, 2.3])
    >>> round(h.best_valid, 1)
    2.3

Scope: the record and its plot; no training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["History"]


@dataclass
class History:
    """What ``train`` measured. Losses are mean cross-entropies in nats per token."""

    steps: list[int] = field(default_factory=list)  # the steps at which both losses were evaluated
    train_loss: list[float] = field(default_factory=list)  # loss on fixed batches of the training data
    valid_loss: list[float] = field(default_factory=list)  # same on the validation data (empty without it)
    step_losses: list[float] = field(default_factory=list)  # the loss of every training batch
    seconds: float = 0.0  # wall-clock time of the training steps (evaluation not counted)
    tokens_seen: int = 0  # training positions seen: steps * accumulate * batch_size * block_size
    diverged: bool = False  # training stopped at a loss that was not finite (lr too high?)
    grad_norms: list[float] = field(default_factory=list)  # global gradient norm of every step, before clipping

    @property
    def best_valid(self) -> float:
        """The lowest validation loss measured."""
        if not self.valid_loss:
            raise ValueError("no validation loss was measured: pass valid_data to train()")
        return min(self.valid_loss)

    def plot(self, ax=None, title: str = "training and validation loss"):
        """Draw the loss curves on ``ax`` (a new figure if None) and return the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        if self.step_losses:
            ax.plot(range(len(self.step_losses)), self.step_losses, color="0.8", lw=0.8,
                    label="training batch")
        ax.plot(self.steps, self.train_loss, marker="o", ms=3, label="train")
        if self.valid_loss:
            ax.plot(self.steps, self.valid_loss, marker="o", ms=3, label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(title)
        ax.legend()
        return ax

