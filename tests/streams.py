"""Data streams the trainer tests share."""


class Interrupt:
    """Wraps a data stream and raises KeyboardInterrupt before the batch at global step ``at``
    (as Ctrl-C there would)."""

    def __init__(self, data, at):
        self.data, self.at, self.seen = data, at, 0

    def __len__(self):
        return len(self.data)

    def set_epoch(self, e):
        self.data.set_epoch(e)

    def iter_from(self, step):
        for b in self.data.iter_from(step):
            if self.seen == self.at:
                raise KeyboardInterrupt
            self.seen += 1
            yield b
