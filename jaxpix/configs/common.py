"""Fields every experiment config shares, and the ``:variant`` argument parser.

Configs are ``get_config(arg)`` functions returning a ``ConfigDict``; run.py
locks them, so an override with a misspelt field is an error.
"""

from __future__ import annotations

import os
import pathlib

import ml_collections

# The offline data: $JAXPIX_DATA if set, else ../shared/data beside the
# repository (this file is jaxpix/configs/common.py). Either way a config's
# data.dir can be overridden on the command line.
SHARED_DATA = pathlib.Path(
  os.environ.get('JAXPIX_DATA')
  or pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
)


def base(dataset: str = 'cifar10') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'train'  # train | eval
  c.seed = 0
  c.dtype = 'float32'  # or 'bfloat16' (compute only; parameters stay float32)
  c.checkpoint = ''  # eval mode: a workdir (or its checkpoints/ folder) to load

  c.data = ml_collections.ConfigDict()
  c.data.dataset = dataset
  c.data.source = 'npz'  # or 'tfds' (prepared tensorflow-datasets, no download)
  c.data.dir = str(SHARED_DATA / ('cifar10' if dataset == 'cifar10' else 'imagenet_sample'))
  c.data.train_split = 'train'
  c.data.eval_split = 'test'  # used when validation_size == 0; eval mode's test split
  c.data.validation_size = 0  # > 0: hold out that many train images for model selection
  c.data.split_seed = 0
  c.data.train_subset = 0  # > 0: train on the first that many images only
  c.data.eval_subset = 0
  c.data.augment = True  # random crop (padding 4) + horizontal flip, on device

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet18'
  c.model.width = 1.0

  c.defence = ml_collections.ConfigDict()
  # What trains and builds the model (jaxpix.build.DEFENCES): none | at | apr
  # | it | median | dd | autoencoder. A dispatch key only; the fields below say how.
  c.defence.name = 'none'
  # APR / adversarial training (APR paper, section IV); all off = no defence.
  c.defence.attention = False  # pixel-wise attention f(A(x) * x)
  c.defence.attention_kernel = 3  # the paper does not give W_a's size
  c.defence.adversarial = False  # L = alpha L_clean + (1 - alpha) L_adv
  c.defence.alpha = 0.7
  c.defence.beta = 0.0  # input-gradient penalty weight (APR: 0.01)
  # Input transformations in front of the classifier (IT); 0 = off.
  c.defence.bit_depth = 0
  c.defence.jpeg_quality = 0
  c.defence.median_size = 0  # a median filter of this (odd) size first
  # Randomized ablation (Levine & Feizi 2020; defence.name='ablation'): the
  # base classifier sees `keep` random pixels of each image (the paper's 75 of
  # CIFAR's 1,024); `votes` fixed ablations make the deterministic stand-in
  # that training's validation accuracy reads (the evaluation certifies and
  # attacks the smoothed classifier itself: eval.smoothing).
  c.defence.ablation = ml_collections.ConfigDict()
  c.defence.ablation.keep = 75
  c.defence.ablation.votes = 8
  # Defensive distillation: softmax temperature of teacher and student, and the
  # teacher's workdir ('' = <workdir>/teacher, trained first if missing; a
  # named one is used as it is).
  c.defence.temperature = 1.0
  c.defence.teacher = ''
  # Autoencoder before a frozen classifier: the classifier's workdir ('' =
  # <workdir>/classifier, trained first as config.model with no defence; a
  # named one is used as it is).
  c.defence.classifier = ''
  # An autoencoder to reuse instead of training one: the workdir of a finished
  # autoencoder run with this run's own seed, data settings, schedule and
  # autoencoder fields (refused otherwise), whatever its classifier. Its loss
  # is reconstruction alone and never reaches the classifier, so that is the
  # autoencoder this run would train, in exact arithmetic ('' = train it here;
  # read only when the run starts).
  c.defence.autoencoder = ''
  c.defence.ae_width = 32
  c.defence.ae_max_pixels = 3  # training corruptions: 0..3 pixels set to extreme colours
  # The autoencoder's own weight decay; < 0: train.weight_decay, what every
  # run before this field did (configs/cifar_autoencoder.py sets 0).
  c.defence.ae_weight_decay = -1.0
  # The training-time adversary (APR, AT). Default: the first-order one, every
  # pixel x extreme colour scored from the input gradient and the best k
  # verified (k forward passes + at most one backward pass per image), on a
  # share of each batch. The paper's (config variant ':de'): differential
  # evolution on the whole batch, in a separate adversarial pass.
  c.defence.adv = ml_collections.ConfigDict()
  c.defence.adv.method = 'first_order'  # or 'de'
  c.defence.adv.k = 4  # 'first_order': candidates verified per image (on average)
  c.defence.adv.radius = 2  # 'first_order': candidate pixels >= radius + 1 apart
  # 'de': the paper attacks with population 400 x 100 generations; per
  # mini-batch that is 40,400 forward passes per training image per step, so
  # the training-time budget is a choice, set per config (and reported).
  c.defence.adv.popsize = 20
  c.defence.adv.maxiter = 4
  c.defence.adv.pixels = 1
  c.defence.adv.mode = 'add'  # the paper's "pixel modification range [-255, 255]"
  # 'mixed': one forward-backward over a batch in which `fraction` of the
  # images (a multiple of 1/8) are replaced by their adversarial versions;
  # alpha weights the clean and adversarial means. 'separate': the paper's
  # clean pass and adversarial pass over the whole batch.
  c.defence.adv.batch = 'mixed'
  c.defence.adv.fraction = 0.25
  # The input-gradient penalty R = mean ||grad_z l||^2 (weight defence.beta).
  c.defence.penalty = ml_collections.ConfigDict()
  # 'fd': its parameter gradient by finite differences (one extra forward-
  # backward of the sub-batch); 'exact': double backprop (the paper's).
  c.defence.penalty.method = 'fd'
  c.defence.penalty.fraction = 0.25  # the share of each batch it is taken on (1/8 steps)
  c.defence.penalty.h = 0.1  # 'fd': step along the gradient, in the domain's units
  # z: 'normalised' = (x - mean) / std per channel, the tensor a PyTorch model
  # (the paper's) is fed after transforms.Normalize; 'pixels' = x in [0, 1].
  # The gradient in z is std * the gradient in x, so R differs by ~std^2 ~ 1/16.
  c.defence.penalty.domain = 'normalised'
  # Each batch trained on in two steps: a plain one whose backward pass also
  # gives every image's input gradient, then the defended one, whose
  # adversary and penalty read that gradient (one step old) instead of a
  # gradient pass of their own ("free" AT, Shafahi et al. 2019). An epoch is
  # then twice the steps: the 'replay' config variants halve train.epochs.
  c.defence.replay = False

  # Evaluation of a checkpoint (mode=eval): the papers' attack protocol.
  c.eval = ml_collections.ConfigDict()
  # Which images: 'correct' (the papers' protocol) = num_images drawn with
  # eval.seed among the correctly classified test images; 'fixed' = num_images
  # drawn with eval.seed among all test images, before any model sees them, so
  # that every model of a table is attacked on the same images (its correctly
  # classified ones) and robust accuracy over the set pairs across models.
  c.eval.image_set = 'correct'
  c.eval.num_images = 500
  c.eval.seed = 0  # which images, and the attack's key
  c.eval.popsize = 400  # the APR paper (and Su et al.): population 400, 100 generations
  c.eval.maxiter = 100
  c.eval.pixels = 1
  c.eval.strategy = 'su'  # or 'keras' (the reference Keras implementation's DE)
  # The APR paper's "pixel modification range [-255, 255]": additive deltas,
  # clipped to valid pixels ('replace' = Su et al.'s colour replacement).
  c.eval.mode = 'add'
  c.eval.targeted = False  # also attack towards every other class (Su et al.)
  c.eval.targeted_images = 0  # > 0: the targeted attack on the first that many only
  c.eval.extreme_colour = False  # also the exhaustive extreme-colour search
  # also the extreme-colour search in gradient-ranked order (attack.gradient_ranked;
  # the model must be differentiable JAX), at this many candidates per image
  # (0: off; 8192 = all of a CIFAR image's, the exhaustive search's outcome)
  c.eval.gradient_ranked = 0
  # also the black-box random search (attack.random_search: extreme colours,
  # eval.pixels pixels, eval.mode) at this many queries per image (0: off)
  c.eval.random_search = 0
  c.eval.gallery = 8  # adversarial examples in gallery.png (0 = none)
  # The attack's fitness reads softmax(logits / temperature). 1 = the deployed
  # model's own probabilities. A distilled model deployed at T = 1 saturates
  # them (true-class probability exactly 1.0 in float32), which leaves DE no
  # signal to follow; attacking at the distillation temperature undoes that
  # (Carlini & Wagner 2016) without changing any decision.
  c.eval.temperature = 1.0
  c.eval.progress = True
  c.eval.step = 0  # the checkpoint's step to evaluate (0: the latest)
  # defence.name='ablation': the smoothed classifier's Monte Carlo certificate
  # (Levine & Feizi: n0 samples select the class, n estimate its probability,
  # Clopper-Pearson at alpha) and the attack on it (jaxpix.evaluation.smoothed).
  c.eval.smoothing = ml_collections.ConfigDict()
  c.eval.smoothing.n0 = 1000
  c.eval.smoothing.n = 10000
  c.eval.smoothing.alpha = 0.05
  c.eval.smoothing.chunk = 500  # ablations per image per batched call
  c.eval.smoothing.attack_ablations = 512  # shared ablations the attack scores through
  c.eval.smoothing.attack_candidates = 64  # (pixel, extreme colour) pairs verified per image
  c.eval.smoothing.check = 1000  # fresh samples that judge the attack's best image
  c.eval.batch_size = 500  # images per forward pass for clean accuracy

  c.train = ml_collections.ConfigDict()
  # The APR paper: Adam, lr 1e-3, weight decay 5e-4, batch 128, 200 epochs.
  c.train.batch_size = 128
  c.train.epochs = 200
  c.train.steps = 0  # > 0 overrides epochs
  c.train.lr = 1e-3
  c.train.weight_decay = 5e-4
  c.train.schedule = 'constant'  # or 'cosine' (with warmup_steps)
  c.train.warmup_steps = 0
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  # Also save after this many minutes of training since the last save (0: off),
  # so that a crash loses minutes, not checkpoint_every steps.
  c.train.checkpoint_minutes = 5.0
  c.train.keep_checkpoints = 3
  c.train.resume_step = 0  # training resumes from this step's checkpoint (0: the latest)
  # Resuming with a config that changes what is trained (anything but the run
  # length, logging and paths) is refused unless this is set (jaxpix.train).
  c.train.allow_changes = False
  c.train.eval_every_epoch = True
  c.train.eval_batch_size = 500
  c.train.progress = True
  return c


def small(c: ml_collections.ConfigDict, variants: set[str]) -> None:
  """The shared ``cpu`` and ``test`` sizes of the CIFAR-10 configs (model, data,
  schedule and the training-time adversary's budget), and the ``vgg16``
  variant (the APR paper's second CIFAR-10 model)."""
  if 'cpu' in variants:
    c.model.width = 0.25
    c.train.epochs = 8
    c.train.schedule = 'cosine'
    c.train.warmup_steps = 200
    c.train.lr = 2e-3
    c.train.checkpoint_every = 500
    c.data.validation_size = 5000
    # The ':de' training-time adversary (used only by configs with one):
    # 8 x (2 + 1) = 24 evaluations per image.
    c.defence.adv.popsize, c.defence.adv.maxiter = 8, 2
    # The full attack budget on fewer images (the Keras reference's 100).
    c.eval.num_images = 100
  if 'test' in variants:
    c.eval.num_images, c.eval.popsize, c.eval.maxiter = 12, 8, 3
    c.eval.progress = False
    c.defence.adv.popsize, c.defence.adv.maxiter, c.defence.adv.k = 4, 1, 2
    c.model.name = 'cnn6'
    c.model.width = 0.125
    c.data.train_subset = 512
    c.data.eval_subset = 200
    c.train.batch_size = 64
    c.train.steps = 12
    c.train.log_every = 4
    c.train.checkpoint_every = 4
    c.train.eval_batch_size = 100
    c.eval.batch_size = 100
    c.train.progress = False
  if 'vgg16' in variants:  # last: 'test,vgg16' tests VGG-16, not the test CNN
    c.model.name = 'vgg16'


def paper_training(c: ml_collections.ConfigDict) -> None:
  """The APR paper's training, as written: differential evolution as the
  training adversary on the whole batch, a separate adversarial pass, and the
  exact (double-backprop) gradient penalty on the whole batch."""
  c.defence.adv.method = 'de'
  c.defence.adv.batch = 'separate'
  c.defence.penalty.method = 'exact'
  c.defence.penalty.fraction = 1.0


def replay(c, variants) -> None:
  """The ``replay`` variant: ``defence.replay`` with half the epochs, so the
  run has as many steps as without it (each batch is trained on twice; free
  adversarial training divides the epochs by its replays alike)."""
  if 'replay' in variants:
    c.defence.replay = True
    c.train.epochs = max(1, c.train.epochs // 2)


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """``'cpu,no_adv'`` -> {'cpu', 'no_adv'}; unknown variants are an error."""
  parts = {p for p in (arg or '').split(',') if p}
  unknown = parts - set(allowed)
  if unknown:
    raise ValueError(f'unknown config variant(s) {sorted(unknown)}; expected {list(allowed)}')
  return parts
