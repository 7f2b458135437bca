"""CIFAR-10 with adversarial training (the APR paper's AT baseline).

    python run.py --config configs/cifar_at.py --workdir workdir/cifar_at
    python run.py --config configs/cifar_at.py:cpu --workdir workdir/cifar_at_cpu

The mixed loss alpha L_clean + (1 - alpha) L_adv (alpha = 0.7) with one-pixel
adversarial examples made per mini-batch from the current parameters; no
attention, no gradient penalty. Same model and optimiser as the baseline.
Variants: cpu, test (as configs/cifar_baseline.py), guided (the cheap
gradient-guided adversary instead of DE), vgg16.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test', 'guided', 'vgg16'))
  c = common.base('cifar10')
  if 'vgg16' in variants:
    c.model.name = 'vgg16'
  c.defence.name = 'at'
  c.defence.adversarial = True
  if 'guided' in variants:
    c.defence.adv.method = 'guided'
  common.small(c, variants)
  return c
