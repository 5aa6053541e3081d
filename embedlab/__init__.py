"""embedlab: train classifiers with mixup-family methods (MultiMix, Dense MultiMix, …) and study their embedding spaces."""

__version__ = "0.1.0"
