"""One classification base and a LightningModule per architecture; the networks are plain nn.Modules."""

from lightning_modules.base import ImageClassifier
from lightning_modules.cnn import CNNCBAMClassifier, CNNClassifier, CNNSEClassifier
from lightning_modules.lenet import LeNetClassifier
from lightning_modules.mlp import MLPClassifier
from lightning_modules.resnet import ResNet18CBAMClassifier, ResNet18Classifier
from lightning_modules.vgg import VGGClassifier

__all__ = [
    "CNNCBAMClassifier",
    "CNNClassifier",
    "CNNSEClassifier",
    "ImageClassifier",
    "LeNetClassifier",
    "MLPClassifier",
    "ResNet18CBAMClassifier",
    "ResNet18Classifier",
    "VGGClassifier",
]
