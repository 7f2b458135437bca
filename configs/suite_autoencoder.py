"""The autoencoder paper's Table 4 as a suite: for each model of the zoo, a
classifier trained with no defence, an autoencoder trained in front of it,
and the attack on the bare classifier, on the pipeline, and transferred.

    python run.py --config configs/suite_autoencoder.py:cpu --workdir workdir/ae_cpu
    python run.py --config configs/suite_autoencoder.py:cpu \\
        --config.suite.only='LeNet,NiN,ResNet' --workdir workdir/ae_cpu

Variants: cpu, test; none = full size.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  c = common.suite(
    'autoencoder',
    (
      'LeNet=cifar_autoencoder.py:{size},lenet',
      'Pure CNN=cifar_autoencoder.py:{size},pure_cnn',
      'NiN=cifar_autoencoder.py:{size},nin',
      'ResNet=cifar_autoencoder.py:{size},resnet32',
      'DenseNet=cifar_autoencoder.py:{size},densenet_bc100',
      'WideResNet=cifar_autoencoder.py:{size},wrn16_8',
    ),
    variants,
  )
  c.suite.overhead = False
  return c
