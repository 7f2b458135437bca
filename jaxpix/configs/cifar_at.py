"""CIFAR-10 with adversarial training (the APR paper's AT baseline).

    python run.py --config configs/cifar_at.py --workdir workdir/cifar_at
    python run.py --config configs/cifar_at.py:cpu --workdir workdir/cifar_at_cpu

The mixed loss alpha L_clean + (1 - alpha) L_adv (alpha = 0.7) with one-pixel
adversarial examples made per mini-batch from the current parameters; no
attention, no gradient penalty. Same model and optimiser as the baseline. By
default the first-order adversary replaces a quarter of every batch in one
forward-backward pass (configs/cifar_apr.py says more).
Variants: cpu, test (as configs/cifar_baseline.py), de (the paper-faithful
training: DE on the whole batch in a separate adversarial pass), vgg16,
replay (as configs/cifar_apr.py: defence.replay at half the epochs).
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test', 'de', 'vgg16', 'replay'))
  c = common.base('cifar10')
  c.defence.name = 'at'
  c.defence.adversarial = True
  if 'de' in variants:
    common.paper_training(c)
  common.small(c, variants)
  common.replay(c, variants)
  return c
