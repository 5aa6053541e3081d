"""Training loops that turn a :class:`embedlab.config.TrainConfig` into a self-describing checkpoint."""

from embedlab.trainers.distributed import session as distributed_session
from embedlab.trainers.loop import train
from embedlab.trainers.state import STATE_FILE, load_state, saved_config, state_digest

__all__ = ["STATE_FILE", "distributed_session", "load_state", "saved_config", "state_digest", "train"]
