"""The model zoo: parameter counts at full width and forward shapes at small width."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpix import models

# Full-width parameter counts (10 classes for CIFAR models, 1,000 for ImageNet).
# References: ResNet-18 (CIFAR) 11.17 M, VGG-16 (CIFAR, BN) 14.7 M, LeNet-5 62 K,
# All-CNN-C 1.37 M, NiN 0.97 M, ResNet-32 0.46 M, DenseNet-BC-100 (k=12) 0.8 M,
# WRN-16-8 11.0 M, ResNet-50 25,557,032 (torchvision, exactly), VGG-19-BN
# 143,678,248 in torchvision minus the 5,504 conv biases that BN makes redundant.
PARAMS = {
  'cnn6': 288_746,
  'resnet18': 11_173_962,
  'vgg16': 14_724_042,
  'lenet': 62_006,
  'pure_cnn': 1_370_986,
  'nin': 968_394,
  'resnet32': 466_714,
  'densenet_bc100': 769_162,
  'densenet_bc40': 176_122,  # no published count: 6 layers per block, else as BC-100
  'wrn16_8': 10_961_370,
  'resnet50': 25_557_032,
  'vgg19': 143_672_744,
}


def _count(name, **kw):
  k = 1000 if models.REGISTRY[name][1] == 'imagenet' else 10
  m = nnx.eval_shape(lambda: models.create(name, num_classes=k, **kw))
  return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


@pytest.mark.parametrize('name', sorted(PARAMS))
def test_parameter_count(name):
  assert _count(name) == PARAMS[name]


@pytest.mark.parametrize('name', ['cnn6', 'resnet18'])
def test_create_draws_the_eager_parameters_in_one_program(name):
  # The same module and the same draws as the constructor called eagerly (a
  # program per parameter shape), up to float32 rounding.
  ctor, _ = models.REGISTRY[name]
  eager = ctor(num_classes=10, width=0.125, rngs=nnx.Rngs(4))
  made = models.create(name, num_classes=10, width=0.125, seed=4)
  assert type(made) is type(eager)
  want = jax.tree_util.tree_leaves_with_path(nnx.state(eager))
  got = jax.tree_util.tree_leaves_with_path(nnx.state(made))
  assert [p for p, _ in got] == [p for p, _ in want]
  for (path, g), (_, w) in zip(got, want, strict=True):
    assert g.dtype == w.dtype and g.shape == w.shape, jax.tree_util.keystr(path)
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  other = models.create(name, num_classes=10, width=0.125, seed=5)
  assert not np.allclose(other.head.kernel[...], made.head.kernel[...])  # the seed is used


def test_width_shrinks_the_model():
  assert _count('resnet18', width=0.25) < PARAMS['resnet18'] / 10


@pytest.mark.parametrize(
  'name',
  [
    'cnn6',
    'resnet18',
    'vgg16',
    'lenet',
    'pure_cnn',
    'nin',
    'resnet32',
    'densenet_bc100',
    'densenet_bc40',
    'wrn16_8',
  ],
)
@pytest.mark.slow
def test_cifar_forward(name):
  m = models.create(name, num_classes=10, width=0.25 if name != 'lenet' else 1.0)
  x = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
  predict = jax.jit(models.as_predict(m))  # jitted: eager dispatch of 100 layers is slow
  y = predict(x)
  assert y.shape == (2, 10) and y.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y)))
  # Eval mode is deterministic and per-example.
  np.testing.assert_allclose(np.asarray(predict(x[:1])), np.asarray(y[:1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet50', 'vgg19'])
@pytest.mark.slow
def test_imagenet_forward(name):
  m = models.create(name, num_classes=1000, width=1 / 16)
  y = jax.jit(models.as_predict(m))(jnp.full((1, 224, 224, 3), 0.5))
  assert y.shape == (1, 1000) and np.all(np.isfinite(np.asarray(y)))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_logits():
  m = models.create('cnn6', num_classes=10, width=0.25, dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
  m.eval()
  y = m(jnp.zeros((2, 32, 32, 3)))
  assert y.dtype == jnp.float32


def test_normalisation_is_inside():
  # A constant image at the CIFAR mean normalises to zero: every conv input is 0.
  m = models.create('cnn6', num_classes=10)
  m.eval()
  x = jnp.broadcast_to(jnp.asarray(models.CIFAR10_MEAN), (1, 32, 32, 3))
  first = m.blocks[0].conv(models.common.normalise(x, models.CIFAR10_MEAN, models.CIFAR10_STD))
  np.testing.assert_allclose(np.asarray(first), 0, atol=1e-5)


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model 'resnet7'"):
    models.create('resnet7', num_classes=10)
  with pytest.raises(ValueError, match='width must be > 0'):
    models.create('cnn6', num_classes=10, width=0)


def test_as_predict_is_a_pure_jittable_function():
  m = models.create('cnn6', num_classes=10, width=0.25)
  m.train()
  predict = models.as_predict(m)
  x = jnp.full((3, 32, 32, 3), 0.25)
  out = np.asarray(jax.jit(predict)(x))
  # The caller's model stays in train mode; predict runs in eval mode.
  assert m.blocks[0].bn.use_running_average is False
  m.eval()
  np.testing.assert_allclose(out, np.asarray(m(x)), rtol=1e-5)
