"""slimtune: make a pretrained language model small, fast and good at one task on your machine."""

from .api import bench, data_config, evaluate, export, predict, run, serve
from .errors import SlimtuneError

__all__ = ["run", "evaluate", "bench", "export", "predict", "serve", "data_config", "SlimtuneError"]
__version__ = "0.1.0"
