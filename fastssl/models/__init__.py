from .alexnet import AlexNet, fold_bn

__all__ = ["AlexNet", "fold_bn"]
