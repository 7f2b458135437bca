"""The autoencoder paper's Table 4 as a suite: for each model of the zoo, a
classifier trained with no defence, an autoencoder trained in front of it,
and the attack on the bare classifier, on the pipeline, and transferred.

    python run.py --config jaxpix/repro/configs/suite_autoencoder.py:cpu --workdir workdir/ae_cpu
    python run.py --config jaxpix/repro/configs/suite_autoencoder.py:cpu \\
        --config.suite.only='LeNet,NiN,ResNet' --workdir workdir/ae_cpu

Variants: cpu, test; none = full size. At ``cpu`` every row trains its
classifier on the ``:cpu`` schedule (8 epochs), the LeNet row also trains
the one autoencoder all six share (8 epochs; below), with the config's
default 32 channels rather than the 16 ``cifar_autoencoder.py:cpu,<model>``
uses alone, and every row attacks 300 test images its bare classifier gets
right at DE population 400 x 10 generations. The "DenseNet" row is
DenseNet-BC-40 at width 0.5 at ``cpu`` (below), beside the paper's
DenseNet-BC-100 numbers. Why:
the earlier 16-channel, 3-epoch autoencoders cost 14-39 points of clean
accuracy, the 32-channel one trained 10 epochs cost LeNet 7.8 (docs/results.md,
pipeline validation accuracy 39.2% -> 47.3%); and the pipeline forwards at
~620-900 images/s in front of LeNet (1,600 at 16 channels), so 30 generations on
300 images would cost one to two hours per attack and row, 10 generations
25-35 minutes. Training images/s of the classifiers at these widths, batch 128,
measured 2026-11-29 with ``benchmarks/train_throughput.py --models lenet@1
pure_cnn@0.25 nin@0.25 resnet32@0.5 densenet_bc100@0.25 wrn16_8@0.125``:
LeNet 2,800, Pure CNN 320, NiN 270, ResNet-32 370, DenseNet-BC100 60,
WRN-16-8 330; the 32-channel autoencoder trained at ~200 and the 16-channel
at ~650 (the committed runs' metrics.jsonl). Forward images/s at batch 400,
bare classifier / pipeline with the 32-channel autoencoder (2026-11-30,
``benchmarks/inference_time.py``, command and table in benchmarks/README.md):
LeNet 7,537 / 848, Pure CNN 3,076 / 735, NiN 1,157 / 551, ResNet-32
1,466 / 547, DenseNet-BC-100 at width 0.25 219 / 177, WRN-16-8 1,662 / 528.
The autoencoder sets the pace of every pipeline attack but DenseNet's, whose
depth (96 thin convolutions in sequence) would take ~5.5 of the suite's ~11
hours on this CPU; ``cpu`` runs DenseNet-BC-40 at width 0.5 in its place
(405 / 270 images/s in the same run, 440-483 alone in two more; a
similar parameter count; ``cifar_autoencoder.CPU_MODEL``).

One autoencoder serves all six rows (``suite.shared_autoencoder``): the
LeNet row trains it, the others reuse it (``defence.autoencoder``) and train
only their classifier. Its loss is reconstruction alone and never reaches
the classifier, so with the same seed, data and schedule every row would
train the very same autoencoder: the three rows of the earlier suite
(docs/results/autoencoder) logged identical losses at every step, and
tests/test_defences.py checks that the parameters come out equal. Training
it once saves five trainings (about half an hour each at 32 channels on the
2-core CPU, slower in front of the larger classifiers, whose forward pass
the training step runs for its accuracy metric). The paper's defence is one
autoencoder "without the need for modifications to the existing models".
"""

from jaxpix.configs import common
from jaxpix.repro.configs import rows


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  cpu = 'cpu' in variants and 'test' not in variants
  kw = dict(defence__ae_width=32, eval__num_images=300, eval__maxiter=10) if cpu else {}
  c = rows.suite(
    'autoencoder',
    (
      rows.row('LeNet', 'cifar_autoencoder', 'lenet', **kw),
      rows.row('Pure CNN', 'cifar_autoencoder', 'pure_cnn', **kw),
      rows.row('NiN', 'cifar_autoencoder', 'nin', **kw),
      rows.row('ResNet', 'cifar_autoencoder', 'resnet32', **kw),
      rows.row('DenseNet', 'cifar_autoencoder', 'densenet_bc100', **kw),
      rows.row('WideResNet', 'cifar_autoencoder', 'wrn16_8', **kw),
    ),
    variants,
  )
  c.suite.overhead = False
  c.suite.shared_autoencoder = 'LeNet'
  return c
