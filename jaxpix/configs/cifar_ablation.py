"""CIFAR-10 with randomized ablation (Levine & Feizi, AAAI 2020): a smoothed
classifier over images with all but 75 pixels ablated, certified against one
changed pixel with probability 1 - alpha per image.

    python run.py --config configs/cifar_ablation.py --workdir workdir/cifar_ablation
    python run.py --config configs/cifar_ablation.py:cpu --workdir workdir/cifar_ablation_cpu
    python run.py --config configs/cifar_ablation.py:cpu --config.mode=eval \\
        --config.checkpoint=workdir/cifar_ablation_cpu --workdir workdir/cifar_ablation_cpu/eval

Training is cross-entropy on ablated images (jaxpix.defences.ablation); eval
mode certifies the smoothed classifier by Monte Carlo (the paper's n0 = 1,000
selection and n = 10,000 estimation samples, alpha = 0.05) and attacks it
(jaxpix.evaluation.smoothed). The paper trains ResNet-18 for 400 epochs
(SGD); this config trains as every other row of Table 1 does, so the rows
compare at one training budget. Variants: cpu (also 2,048 estimation
samples: 1/5 of the paper's cost), test.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  c = common.base('cifar10')
  c.defence.name = 'ablation'
  common.small(c, variants)
  s = c.eval.smoothing
  if 'cpu' in variants:
    s.n0, s.n, s.chunk = 256, 2048, 256
    s.check = 1024
  if 'test' in variants:
    c.defence.ablation.votes = 2
    s.n0, s.n, s.chunk = 32, 64, 32
    s.attack_ablations, s.attack_candidates, s.check = 32, 8, 32
  return c
