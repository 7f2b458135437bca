"""Classifiers (Flax NNX). Each takes float images in [0, 1] and normalises inside."""

from jaxpix.models.cnn import CNN6 as CNN6
from jaxpix.models.common import CIFAR10_MEAN as CIFAR10_MEAN
from jaxpix.models.common import CIFAR10_STD as CIFAR10_STD
from jaxpix.models.common import as_predict as as_predict
