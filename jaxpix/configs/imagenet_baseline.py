"""ImageNet classifier with no defence: the APR paper's ResNet-50 / VGG-19 at 224x224.

    python run.py --config configs/imagenet_baseline.py --workdir workdir/imagenet_resnet50
    python run.py --config configs/imagenet_baseline.py:vgg19 --workdir workdir/imagenet_vgg19
    python run.py --config configs/imagenet_baseline.py:smoke --workdir /tmp/jaxpix_imagenet_smoke

Full runs read ImageNet through tensorflow-datasets (``imagenet2012``, prepared
beforehand: it cannot be downloaded automatically); the paper trains 90
epochs at batch 64 with Adam lr 1e-3, weight decay 5e-4.

``smoke`` runs the 224x224 path end to end on the 500-image ImageNet sample in
../shared/data (ResNet-50 at width 1/8, a few steps). That sample has one image
per class, so the accuracy it reports is meaningless: it shows that the path
works, nothing more.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('vgg19', 'smoke'))
  c = common.base('imagenet')
  c.data.source = 'tfds'
  c.data.dir = ''
  c.model.name = 'vgg19' if 'vgg19' in variants else 'resnet50'
  c.train.batch_size = 64
  c.train.epochs = 90
  c.data.eval_split = 'validation'  # the paper evaluates on ImageNet's validation set
  c.data.augment = False  # random-resized crops belong to the tfds pipeline; not built yet
  if 'smoke' in variants:
    c.data.dataset = 'imagenet_sample'
    c.data.source = 'npz'
    c.data.dir = str(common.SHARED_DATA / 'imagenet_sample')
    c.data.train_split = 'test'  # the sample's only split: train on 400, evaluate on 100
    c.data.eval_split = 'test'
    c.data.validation_size = 100
    c.model.width = 0.125
    c.train.batch_size = 16
    c.train.steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.train.eval_batch_size = 50
  return c
