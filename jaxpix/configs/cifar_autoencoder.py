"""CIFAR-10: a convolutional autoencoder before a frozen classifier (the autoencoder paper).

    python run.py --config configs/cifar_autoencoder.py:cpu --workdir workdir/ae_resnet18_cpu
    python run.py --config configs/cifar_autoencoder.py:cpu,lenet \\
        --config.defence.classifier=workdir/lenet_cpu --workdir workdir/ae_lenet_cpu

The classifier is ``config.model`` trained with no defence, loaded from
``config.defence.classifier`` or, if that is empty, trained first into
<workdir>/classifier; it is never changed (a named classifier is loaded as
it is, so this run's train settings train only the autoencoder). The
autoencoder learns to map clean images and images with 0-3 pixels set to
extreme colours (a quarter stay clean) back to the clean image (mean squared error), and the
defended model is classifier(AE(x)).
Variants: cpu, test (as configs/cifar_baseline.py), and a zoo model for the
classifier: lenet, pure_cnn, nin, resnet32, densenet_bc100, wrn16_8. The zoo
models run at full width, except with ``cpu``: there each is cut to the width
in CPU_WIDTH (DenseNet-BC-100 is replaced by DenseNet-BC-40, CPU_MODEL) and
the autoencoder to 16 channels (``cpu`` alone keeps
ResNet-18 at width 0.25 and the 32-channel autoencoder), the sizes at which this
project's 2-core CPU trains and attacks them in minutes (measured 2026-11-23,
pipeline forward images/s at width 32 -> 16 in front of LeNet: 879 -> 1,603).
"""

from jaxpix.configs import common

ZOO = ('lenet', 'pure_cnn', 'nin', 'resnet32', 'densenet_bc100', 'wrn16_8')
# ``cpu`` widths (full width is for accelerators). Training images/s of the
# bare classifier on the 2-core CPU (batch 128, measured 2026-11-23): LeNet
# ~1,900, ResNet-32 ~500 at width 0.5 and ~190 at full width, Pure CNN ~210
# at width 0.5, NiN ~110 at width 0.5.
CPU_WIDTH = dict(
  lenet=1.0, pure_cnn=0.25, nin=0.25, resnet32=0.5, densenet_bc100=0.5, wrn16_8=0.125
)
# ``cpu`` runs DenseNet-BC-100 as DenseNet-BC-40 (same blocks, 6 bottleneck
# layers each instead of 16) at width 0.5 (growth rate 6): 45,802 parameters
# against 53,187 for BC-100 at width 0.25 (growth 3), and 405-483 images/s
# forward at batch 400 against 210-220 (three runs of benchmarks/inference_time.py
# on the 2-core CPU, 2026-11-30: benchmarks/README.md). At BC-100's depth the
# CPU spends its time on 96 thin convolutions in sequence (48 bottleneck
# layers): its training (~60 images/s) and the two attacks of the
# autoencoder suite would take ~5.5 of the suite's ~11 hours.
CPU_MODEL = dict(densenet_bc100='densenet_bc40')


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test') + ZOO)
  c = common.base('cifar10')
  c.defence.name = 'autoencoder'
  # No weight decay on the autoencoder (its classifier keeps
  # train.weight_decay). The autoencoder paper gives none; the APR paper's
  # coupled 5e-4 swamps a reconstruction loss of ~5e-3: one epoch of the
  # 32-channel autoencoder in front of the autoencoder suite's LeNet reached
  # training MSE 0.0082 with it and 0.0044 without, pipeline validation
  # accuracy 44.2% against 48.5% (2026-11-30, docs/defences.md, docs/results.md).
  c.defence.ae_weight_decay = 0.0
  common.small(c, variants)
  for name in ZOO:  # after small(): 'test,lenet' tests LeNet, not the test CNN
    if name in variants:
      c.model.name = name
  if variants & set(ZOO):
    c.model.width = CPU_WIDTH[c.model.name] if 'cpu' in variants else 1.0
    if 'cpu' in variants:
      c.model.name = CPU_MODEL.get(c.model.name, c.model.name)
      c.defence.ae_width = 16
  if 'test' in variants:
    c.defence.ae_width = 8
  return c
