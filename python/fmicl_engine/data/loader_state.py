"""The state every two-view loader shares: (epoch, position), one semantics for all of them."""

from __future__ import annotations


class EpochPositionState:
    """``position`` counts this rank's samples already yielded in ``epoch``, so a run resumed from
    ``state_dict()`` continues at the next unseen sample.

    ``set_epoch(e)`` with a new epoch starts it at position 0; with the current epoch it keeps the
    position, so the usual "set_epoch at each epoch start" of a training loop does not undo a
    ``load_state_dict`` made just before it.
    """

    epoch: int = 0
    position: int = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        self.check_position(position)
        self.epoch, self.position = epoch, position

    def check_position(self, position: int) -> None:
        """Raise ValueError if ``position`` cannot be resumed from (a loader may be stricter)."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
