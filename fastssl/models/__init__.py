"""The networks: AlexNet (the paper's trunk, with its small-input variant) and BiGAN's parts.

:data:`MODELS` names the trunks a pretrained file may hold; a new trunk is its own file and one
line there (it takes its ``config`` dict as keywords and exposes it as ``.config``).
"""

from .alexnet import AlexNet, fold_bn

MODELS = {"alexnet": AlexNet}  # name -> class

__all__ = ["MODELS", "AlexNet", "fold_bn"]
