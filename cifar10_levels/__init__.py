"""cifar10-levels: CIFAR-10 level recipes on timm + Accelerate."""
__version__ = "0.1.0"
