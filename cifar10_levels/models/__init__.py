"""timm models: the factory, freezing, whether pretrained weights are at hand, and our own cifar_speednet."""
