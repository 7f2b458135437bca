"""The autoencoder paper's Table 4 as a suite: for each model of the zoo, a
classifier trained with no defence, an autoencoder trained in front of it,
and the attack on the bare classifier, on the pipeline, and transferred.

    python run.py --config configs/suite_autoencoder.py:cpu --workdir workdir/ae_cpu
    python run.py --config configs/suite_autoencoder.py:cpu \\
        --config.suite.only='LeNet,NiN,ResNet' --workdir workdir/ae_cpu

Variants: cpu, test; none = full size.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  c = common.suite(
    'autoencoder',
    (
      common.row('LeNet', 'cifar_autoencoder', 'lenet'),
      common.row('Pure CNN', 'cifar_autoencoder', 'pure_cnn'),
      common.row('NiN', 'cifar_autoencoder', 'nin'),
      common.row('ResNet', 'cifar_autoencoder', 'resnet32'),
      common.row('DenseNet', 'cifar_autoencoder', 'densenet_bc100'),
      common.row('WideResNet', 'cifar_autoencoder', 'wrn16_8'),
    ),
    variants,
  )
  c.suite.overhead = False
  return c
