"""Randomized ablation (jaxpix.defences.ablation, jaxpix.evaluation.smoothed):
the ablations, the certificate against a planted classifier whose smoothed
probabilities are known in closed form, the attack on it, and eval mode."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxpix import build, evaluation, models, train
from jaxpix.configs import cifar_ablation
from jaxpix.defences import ablation
from jaxpix.evaluation import smoothed

N, K = 1024, 200  # CIFAR's pixels; more kept than the paper's 75, so delta is wide


def test_keep_masks_are_uniform_k_subsets():
  keep = np.asarray(ablation.keep_masks(jax.random.key(0), 4000, N, 75))
  assert (keep.sum(1) == 75).all()
  freq = keep.mean(0)  # each pixel kept with probability 75 / 1024
  sd = math.sqrt(75 / N * (1 - 75 / N) / 4000)
  assert abs(freq.mean() - 75 / N) < 1e-9
  assert np.abs(freq - 75 / N).max() < 5 * sd
  with pytest.raises(ValueError, match='k'):
    ablation.keep_masks(jax.random.key(0), 2, N, 0)


def test_encode_marks_ablated_pixels_apart_from_black():
  x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 3))
  keep = jnp.zeros((2, 4, 4), bool).at[:, 1, 2].set(True)
  e = np.asarray(ablation.encode(x, keep))
  assert e.shape == (2, 4, 4, 6)
  np.testing.assert_allclose(e[:, 1, 2], np.concatenate([x[:, 1, 2], 1 - x[:, 1, 2]], -1))
  assert (e[:, 0] == 0).all() and (e[:, 1, 0] == 0).all()
  black = np.asarray(ablation.encode(jnp.zeros((1, 1, 1, 3)), jnp.ones((1, 1, 1), bool)))
  assert black.sum() == 3  # a kept black pixel is (0, 0, 0, 1, 1, 1), not all zeros


def test_delta_and_the_clopper_pearson_bound():
  assert ablation.delta(N, 75) == pytest.approx(75 / N)
  # rho = 2 against counting the subsets that keep neither of two pixels
  n, k = 9, 4
  subsets = math.comb(n, k)
  neither = sum(1 for s in range(1 << n) if bin(s).count('1') == k and not s & 0b11)
  assert ablation.delta(n, k, 2) == pytest.approx(1 - neither / subsets)
  lb = ablation.lower_bound(np.array([0, 50, 100]), 100, 0.05)
  assert lb[0] == 0
  assert lb[2] == pytest.approx(0.05 ** (1 / 100))  # all successes: alpha^(1/n)
  # the exact binomial: P(X >= 50 | p = lower bound) = alpha
  assert scipy.stats.binom.sf(49, 100, lb[1]) == pytest.approx(0.05, rel=1e-6)


def _planted(encoded):
  """Class 1 when the ablation keeps a bright pixel (mean colour > 0.75),
  else class 0; smooth in the colours so the attack's gradient ranks."""
  brightness = encoded[..., :3].mean(-1)  # 0 where ablated
  bright = jax.nn.sigmoid(40 * (brightness - 0.75)).sum((1, 2))
  return jnp.stack([jnp.zeros_like(bright), 20 * (bright - 0.5)], -1)


def _image(m):
  """A grey image with ``m`` white pixels; under the smoothing, class 0's
  probability is C(N - m, K) / C(N, K), the chance no white pixel is kept."""
  x = np.full((32, 32, 3), 0.3, np.float32)
  x.reshape(-1, 3)[np.linspace(0, N - 1, m).astype(int) if m else []] = 1.0
  return x


def p_class0(m):
  return math.comb(N - m, K) / math.comb(N, K)


def test_certificate_matches_the_closed_form():
  counts = smoothed.make_counts(_planted, k=K, chunk=512, classes=2)
  dlt = ablation.delta(N, K)
  images = np.stack([_image(m) for m in (0, 1, 2, 4)])
  keys = jax.vmap(jax.random.key)(jnp.arange(4))
  c = np.asarray(counts(images, keys, 4096))
  freq = c[:, 0] / 4096
  exact = np.array([p_class0(m) for m in (0, 1, 2, 4)])
  assert np.abs(freq - exact).max() < 4 * math.sqrt(0.25 / 4096)
  certified = ablation.lower_bound(c[:, 0], 4096, 0.05) - dlt > 0.5
  # Truly robust where class 0 keeps > 1/2 with one more white pixel (m = 0,
  # 1, 2); the certificate, sound but conservative, needs p - delta > 1/2:
  # m = 0 and 1 only.
  assert [p_class0(m + 1) > 0.5 for m in (0, 1, 2, 4)] == [True, True, True, False]
  assert certified.tolist() == [True, True, False, False]


def test_attack_finds_the_pixel_that_flips_the_smoothed_class():
  search, queries = smoothed.make_search(
    _planted, k=K, masks=512, candidates=16, classes=2, hw=(32, 32)
  )
  counts = smoothed.make_counts(_planted, k=K, chunk=512, classes=2)
  x = _image(3)  # class 0 at 0.521; one more white pixel: 0.419
  pix, corner, margin = (int(v) for v in search(jnp.asarray(x), 0, jax.random.key(5)))
  assert smoothed.CORNERS[corner].tolist() == [1, 1, 1] and x.reshape(-1, 3)[pix, 0] < 1
  assert margin < 0
  adv = x.reshape(-1, 3).copy()
  adv[pix] = 1.0
  c = np.asarray(counts(adv.reshape(1, 32, 32, 3), jax.random.key(6)[None], 4096))[0]
  assert c[1] > c[0]  # fooled: the smoothed classifier now says class 1
  # An image with no white pixel cannot be fooled by one: 0.805 stays class 0.
  *_, margin0 = (int(v) for v in search(jnp.asarray(_image(0)), 0, jax.random.key(5)))
  assert margin0 > 0
  assert queries > 512


@pytest.fixture(scope='module')
def ablated_run(shared_data, tmp_path_factory):
  del shared_data
  d = tmp_path_factory.mktemp('ablation')
  c = cifar_ablation.get_config('test')
  train.train_and_evaluate(c, str(d / 'train'))
  return d


def _eval_config(d):
  e = cifar_ablation.get_config('test')
  e.mode, e.checkpoint = 'eval', str(d / 'train')
  e.eval.image_set, e.eval.num_images = 'fixed', 12
  return e


@pytest.mark.slow  # 6 s: the quick loop's budget
def test_ablated_model_takes_six_channels():
  c = cifar_ablation.get_config('test')
  model = build.build_model(c, 10)
  assert isinstance(model, ablation.Ablated)
  out = jax.jit(models.as_predict(model))(jnp.zeros((3, 32, 32, 3)))
  assert out.shape == (3, 10)
  np.testing.assert_allclose(np.exp(np.asarray(out)).sum(-1), 1, rtol=1e-5)  # log mean softmax


@pytest.mark.slow  # trains the test model, certifies and attacks 12 images twice
def test_eval_certifies_attacks_and_resumes(ablated_run):
  d = ablated_run
  e = _eval_config(d)
  res = evaluation.evaluate(e, str(d / 'eval'))
  fixed = res['fixed_images']
  assert len(fixed) == 12 and res['test_images'] == 12
  recs = [json.loads(ln) for ln in (d / 'eval' / 'certify_ablation.jsonl').read_text().splitlines()]
  by = {r['index']: r for r in recs if 'index' in r}
  assert sorted(by) == fixed
  assert all(sum(r['counts']) == e.eval.smoothing.n for r in by.values())
  correct = [i for i in fixed if by[i]['prediction'] == by[i]['label']]
  assert res['images'] == correct
  assert set(res['certified_images']) == {
    i for i in fixed if by[i]['certified'] and by[i]['selected'] == by[i]['label']
  }
  assert set(res['robust_images']) <= set(correct)
  assert res['attacks']['ablation_search']['attacks'] == len(correct)
  assert res['robust_accuracy'] == len(res['robust_images']) / 12
  # A second run reads the logs: the same numbers, nothing recomputed.
  again = evaluation.evaluate(e, str(d / 'eval'))
  for key in ('certified_images', 'robust_images', 'images'):
    assert again[key] == res[key]


@pytest.mark.slow  # seconds of compilation: kept out of the quick loop (< 3 min)
def test_eval_bad_input(tmp_path):
  # Checked before any checkpoint is read (there is none here).
  d = tmp_path
  e = _eval_config(d)
  e.eval.image_set = 'correct'
  with pytest.raises(ValueError, match="image_set='fixed'"):
    evaluation.evaluate(e, str(d / 'bad'))
  e = _eval_config(d)
  e.eval.smoothing.n = 50
  with pytest.raises(ValueError, match='multiple of'):
    evaluation.evaluate(e, str(d / 'bad'))
  c2 = cifar_ablation.get_config('test')
  c2.defence.median_size = 3
  with pytest.raises(ValueError, match='no input transformation'):
    build.build_model(c2, 10)
