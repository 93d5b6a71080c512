"""cifar_speednet: a small CIFAR-native network for the fast recipe, registered with timm."""
from __future__ import annotations
