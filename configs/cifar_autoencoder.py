"""CIFAR-10: a convolutional autoencoder before a frozen classifier (the autoencoder paper).

    python run.py --config configs/cifar_autoencoder.py:cpu --workdir workdir/ae_resnet18_cpu
    python run.py --config configs/cifar_autoencoder.py:cpu,lenet \\
        --config.defence.classifier=workdir/lenet_cpu --workdir workdir/ae_lenet_cpu

The classifier is ``config.model`` trained with no defence, loaded from
``config.defence.classifier`` or, if that is empty, trained first into
<workdir>/classifier; it is never changed. The autoencoder learns to map
clean images and images with 1-3 pixels set to extreme colours back to the
clean image (mean squared error), and the defended model is classifier(AE(x)).
Variants: cpu, test (as configs/cifar_baseline.py), and a zoo model for the
classifier: lenet, pure_cnn, nin, resnet32, densenet_bc100, wrn16_8.
"""

from configs import common

ZOO = ('lenet', 'pure_cnn', 'nin', 'resnet32', 'densenet_bc100', 'wrn16_8')


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test') + ZOO)
  c = common.base('cifar10')
  c.defence.name = 'autoencoder'
  common.small(c, variants)
  for name in ZOO:  # after small(): 'test,lenet' tests LeNet, not the test CNN
    if name in variants:
      c.model.name = name
  if variants & set(ZOO):
    c.model.width = 1.0  # the zoo models are small enough at full width
  if 'test' in variants:
    c.defence.ae_width = 8
  return c
