"""Bad input is refused with an error that names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import attack

import toy_models as toy

H = W = 6
PREDICT = toy.linear(H, W, k=4)


def _run(images=None, labels=None, predict=PREDICT, **kw):
  images = toy.cifar_like(3, H, W) if images is None else images
  labels = np.zeros(3, np.int32) if labels is None else labels
  kw.setdefault('key', jax.random.key(0))
  kw.setdefault('popsize', 8)
  kw.setdefault('maxiter', 1)
  return attack.one_pixel(predict, images, labels, **kw)


@pytest.mark.parametrize(
  'images, exc, words',
  [
    (toy.cifar_like(3, H, W)[0], ValueError, '4-D'),
    ((toy.cifar_like(3, H, W) * 255).astype(np.uint8), TypeError, 'float'),
    (toy.cifar_like(3, H, W) * 2, ValueError, r'\[0, 1\]'),
    (toy.cifar_like(3, H, W) - 0.5, ValueError, r'\[0, 1\]'),
    (np.full((3, H, W, 3), 0.5, np.float32), ValueError, '8-bit'),
    ([[1.0]], TypeError, 'images must be an array'),
  ],
)
def test_bad_images(images, exc, words):
  with pytest.raises(exc, match=words):
    _run(images=images)


@pytest.mark.parametrize(
  'labels, exc, words',
  [
    (np.zeros(2, np.int32), ValueError, r'labels must have shape \[N\] = \(3,\)'),
    (np.zeros((3, 1), np.int32), ValueError, 'labels must have shape'),
    (np.array([0, 1, 4]), ValueError, r'labels must lie in \[0, 4\)'),
    (np.array([0, -1, 2]), ValueError, 'labels must lie in'),
    (np.zeros(3, np.float32), TypeError, 'labels must be integers'),
  ],
)
def test_bad_labels(labels, exc, words):
  with pytest.raises(exc, match=words):
    _run(labels=labels)


def test_targets_equal_to_labels():
  with pytest.raises(ValueError, match=r'targets must differ from labels.*\[1\]'):
    _run(labels=np.array([0, 1, 2]), targets=np.array([1, 1, 3]))
  with pytest.raises(ValueError, match=r'targets must lie in \[0, 4\)'):
    _run(targets=np.array([1, 2, 9]))


@pytest.mark.parametrize(
  'kw, words',
  [
    (dict(popsize=3), r'popsize must be an int >= 4 for rand1'),
    (dict(popsize=2, strategy='keras'), r'popsize must be an int >= 3 for best1'),
    (dict(maxiter=-1), 'maxiter must be'),
    (dict(pixels=0), r'pixels must be an int in \[1, H\*W\] = \[1, 36\]'),
    (dict(pixels=37), r'pixels must be an int in \[1, H\*W\]'),
    (dict(strategy='fancy'), 'strategy must be one of'),
    (dict(mode='xor'), 'mode must be one of'),
    (dict(stop_threshold=1.5), 'stop_threshold'),
    (dict(l2_penalty=-1.0), 'l2_penalty'),
    (dict(slots=0), 'slots must be a positive int'),
    (dict(steps_per_call=0), 'steps_per_call must be a positive int'),
    (dict(indices=np.array([0, 0, 1])), 'indices must be distinct'),
  ],
)
def test_bad_settings(kw, words):
  with pytest.raises(ValueError, match=words):
    _run(**kw)


def test_bad_de_config():
  with pytest.raises(ValueError, match='crossover'):
    attack.DEConfig(crossover=1.5)
  with pytest.raises(ValueError, match='mutation'):
    attack.DEConfig(mutation=(0.9, 0.5))


def test_key_must_be_typed():
  with pytest.raises(TypeError, match=r'jax.random.key'):
    _run(key=jax.random.PRNGKey(0))


@pytest.mark.parametrize(
  'predict, words',
  [
    (lambda x: jnp.sum(x, axis=(1, 2, 3)), r'logits \[B, num_classes\].*\(2,\)'),
    (lambda x: x, r'logits \[B, num_classes\]'),
    (lambda x: jnp.zeros((1, 10)), r'returned \(1, 10\)'),
    (lambda x: x @ jnp.ones((7, 2)), 'predict failed on a float32 batch'),
  ],
)
def test_bad_predict(predict, words):
  with pytest.raises(ValueError, match=words):
    _run(predict=predict)


def test_extreme_colour_checks_too():
  with pytest.raises(ValueError, match='chunk must be a positive int'):
    attack.extreme_colour(PREDICT, toy.cifar_like(3, H, W), np.zeros(3, np.int32), chunk=0)
  with pytest.raises(ValueError, match='labels must have shape'):
    attack.extreme_colour(PREDICT, toy.cifar_like(3, H, W), np.zeros(4, np.int32))


@pytest.mark.parametrize('run', ['one_pixel', 'extreme_colour', 'gradient_ranked'])
def test_the_attacks_share_their_keywords(run):
  x = toy.cifar_like(3, H, W)
  y = np.asarray(PREDICT(jnp.asarray(x))).argmax(1).astype(np.int32)  # all attacked
  search = dict(popsize=8, maxiter=1) if run == 'one_pixel' else dict(chunk=48)
  fn = getattr(attack, run)
  # The key is checked by every attack, even a search that draws nothing...
  with pytest.raises(TypeError, match=r'jax.random.key'):
    fn(PREDICT, x, y, key=jax.random.PRNGKey(0), **search)
  # ...and so are the run options, the same names everywhere.
  with pytest.raises(TypeError, match=f"{run}\\(\\) got an unexpected keyword argument 'slot'"):
    fn(PREDICT, x, y, key=jax.random.key(0), slot=2, **search)
  with pytest.raises(ValueError, match='batch must be a positive int'):
    fn(PREDICT, x, y, key=jax.random.key(0), batch=0, **search)
  # One set of run options, passed to any of them.
  seen = []
  run_options = dict(slots=2, batch=96, devices=jax.devices()[:1], steps_per_call=3)
  r = fn(
    PREDICT,
    x,
    y,
    key=jax.random.key(0),
    indices=np.array([7, 8, 9]),
    progress=seen.append,
    **run_options,
    **search,
  )
  assert isinstance(r, attack.AttackResult) and not r.misclassified.any() and r.queries.all()
  np.testing.assert_array_equal(np.sort(np.concatenate([f['gidx'] for f in seen])), [7, 8, 9])
