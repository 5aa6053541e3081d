"""Training loops that turn a :class:`embedlab.config.TrainConfig` into a self-describing checkpoint."""

from trainers.loop import train

__all__ = ["train"]
