"""CIFAR-10 with Adaptive Pixel Resilience (APR paper, section IV; Table 1's APR row).

    python run.py --config configs/cifar_apr.py --workdir workdir/cifar_apr
    python run.py --config configs/cifar_apr.py:cpu --workdir workdir/cifar_apr_cpu
    python run.py --config configs/cifar_apr.py:cpu,no_adv --workdir workdir/cifar_apr_cpu_no_adv

APR = pixel-wise attention + mixed loss (alpha = 0.7) with one-pixel examples
made per mini-batch from the current parameters + input-gradient penalty
(beta = 0.01), on ResNet-18 with the paper's optimiser (Adam 1e-3, wd 5e-4,
batch 128, 200 epochs).

Variants (comma-separated):
  cpu, test      the sizes of configs/cifar_baseline.py (cpu: the training-time
                 DE is cut to population 8 x 2 generations, 24 evaluations per
                 image, to fit the CPU; 'guided' then tries 3 pixels x 8 colours).
  no_attention   Table 3: APR without the attention layer.
  no_adv         Table 3: APR without adversarial training.
  no_reg         Table 3: APR without the gradient penalty.
  guided         the alternative training adversary: the top-m input-gradient
                 pixels x the 8 extreme colours (m = 8: 64 evaluations per
                 image, plus one backward pass) instead of DE.
"""

from configs import common

VARIANTS = ('cpu', 'test', 'no_attention', 'no_adv', 'no_reg', 'guided', 'vgg16')


def get_config(arg=None):
  variants = common.parse_arg(arg, VARIANTS)
  c = common.base('cifar10')
  if 'vgg16' in variants:
    c.model.name = 'vgg16'
  c.defence.name = 'apr'
  c.defence.attention = 'no_attention' not in variants
  c.defence.adversarial = 'no_adv' not in variants
  c.defence.beta = 0.0 if 'no_reg' in variants else 0.01
  if 'guided' in variants:
    c.defence.adv.method = 'guided'
  common.small(c, variants)
  # The ablations train different models: keep their checkpoints apart.
  c.defence.name = '_'.join(['apr'] + sorted(variants & {'no_attention', 'no_adv', 'no_reg'}))
  return c
