"""CIFAR-10 with Adaptive Pixel Resilience (APR paper, section IV; Table 1's APR row).

    python run.py --config configs/cifar_apr.py --workdir workdir/cifar_apr
    python run.py --config configs/cifar_apr.py:cpu --workdir workdir/cifar_apr_cpu
    python run.py --config configs/cifar_apr.py:cpu,de --workdir workdir/cifar_apr_cpu_de

APR = pixel-wise attention + mixed loss (alpha = 0.7) with one-pixel examples
made per mini-batch from the current parameters + input-gradient penalty
(beta = 0.01), on ResNet-18 with the paper's optimiser (Adam 1e-3, wd 5e-4,
batch 128, 200 epochs).

By default the training is the cheap form of the same loss (docs/defences.md, "Defended
training"): the first-order adversary (every pixel x extreme colour scored
from the input gradient, the best 4 verified) replaces a quarter of every batch
in one forward-backward pass, and the penalty's parameter gradient is a
finite-difference estimate on another quarter, reusing the same input gradient.

Variants (comma-separated):
  cpu, test      the sizes of configs/cifar_baseline.py.
  de             the paper-faithful training: differential evolution on the
                 whole batch in a separate adversarial pass (cpu: population
                 8 x 2 generations, 24 evaluations per image) and the exact
                 double-backprop penalty on the whole batch.
  no_attention   Table 3: APR without the attention layer.
  no_adv         Table 3: APR without adversarial training.
  no_reg         Table 3: APR without the gradient penalty.
  vgg16          VGG-16 instead of ResNet-18.
  replay         each batch trained on twice, a plain step then the defended
                 one, whose adversary and penalty read the plain step's input
                 gradient (defence.replay), at half the epochs: as many steps.
"""

from jaxpix.configs import common

VARIANTS = ('cpu', 'test', 'de', 'no_attention', 'no_adv', 'no_reg', 'vgg16', 'replay')


def get_config(arg=None):
  variants = common.parse_arg(arg, VARIANTS)
  c = common.base('cifar10')
  c.defence.name = 'apr'
  c.defence.attention = 'no_attention' not in variants
  c.defence.adversarial = 'no_adv' not in variants
  c.defence.beta = 0.0 if 'no_reg' in variants else 0.01
  if 'de' in variants:
    common.paper_training(c)
  common.small(c, variants)
  common.replay(c, variants)
  return c
