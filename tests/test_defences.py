"""APR (attention, mixed adversarial loss, gradient penalty), AT and their training adversaries."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpix import (
  attack,
  build,
  checkpoint,
  configs,
  data,
  defences,
  evaluation,
  models,
  restore,
  train,
)
from jaxpix.configs import cifar_apr, cifar_at
from jaxpix.defences import apr

import toy_models as toy


def _lines(workdir):
  return [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('variant', ['test', 'test,de'])
@pytest.mark.slow
def test_apr_trains_with_all_three_terms(shared_data, tmp_path, variant):
  del shared_data
  cfg = cifar_apr.get_config(variant)
  train.train_and_evaluate(cfg, str(tmp_path))
  logged = [ln for ln in _lines(tmp_path) if 'loss' in ln]
  assert len(logged) == 3
  for ln in logged:
    for k in ('clean_loss', 'adv_loss', 'grad_penalty'):
      assert np.isfinite(ln[k]) and ln[k] > 0, k
    # L_total = alpha L_clean + (1 - alpha) L_adv + beta R (averages are linear;
    # the finite-difference estimator trains R but the logged value is R's).
    want = 0.7 * ln['clean_loss'] + 0.3 * ln['adv_loss'] + 0.01 * ln['grad_penalty']
    assert ln['loss'] == pytest.approx(want, rel=1e-5)
    assert ln['adv_changed'] > 0.9  # the adversary really perturbed the batch
    assert 0 <= ln['adv_fooled'] <= 1
  ckpt = checkpoint.Checkpointer(tmp_path / 'checkpoints')
  assert ckpt.meta()['defence'] == 'apr'
  ckpt.close()
  assert (tmp_path / 'attention_maps.png').stat().st_size > 1000  # the section V.F figure


@pytest.mark.parametrize('variant', ['test', 'test,de'])
@pytest.mark.slow
def test_adversarial_training_trains(shared_data, tmp_path, variant):
  del shared_data
  cfg = cifar_at.get_config(variant)
  train.train_and_evaluate(cfg, str(tmp_path))
  ln = [ln for ln in _lines(tmp_path) if 'loss' in ln][-1]
  assert 'grad_penalty' not in ln
  assert ln['loss'] == pytest.approx(0.7 * ln['clean_loss'] + 0.3 * ln['adv_loss'], rel=1e-5)
  assert ln['adv_changed'] > 0.9


def _metric_keys(cfg):
  model = build.build_model(cfg, 10)
  model.train()
  ((_, _, term),) = defences.loss_terms(cfg)
  x, y = jnp.asarray(toy.cifar_like(8, 32, 32)), jnp.arange(8) % 10
  _, metrics = nnx.jit(lambda m, x, y: term(m, x, y, jax.random.key(0)))(model, x, y)
  return set(metrics)


@pytest.mark.parametrize(
  'variant, adversarial, beta, attention',
  [
    ('', True, 0.01, True),
    ('no_attention', True, 0.01, False),
    ('no_adv', False, 0.01, True),
    ('no_reg', True, 0.0, True),
  ],
)
@pytest.mark.slow
def test_ablation_switches(variant, adversarial, beta, attention):
  cfg = cifar_apr.get_config(','.join(['test', variant]).strip(','))
  assert (cfg.defence.adversarial, cfg.defence.beta, cfg.defence.alpha) == (adversarial, beta, 0.7)
  assert [name for name, _, _ in defences.loss_terms(cfg)] == ['apr']
  keys = _metric_keys(cfg)
  assert ('adv_loss' in keys) == adversarial and ('adv_fooled' in keys) == adversarial
  assert ('grad_penalty' in keys) == (beta > 0)
  model = build.build_model(cfg, 10)
  assert isinstance(model, defences.Attended) == attention
  assert cfg.defence.name == 'apr'  # a dispatch key: the fields above say which ablation


def test_baseline_has_only_the_clean_term():
  from jaxpix.configs import cifar_baseline

  assert [n for n, _, _ in defences.loss_terms(cifar_baseline.get_config('test'))] == ['clean']


def test_de_variant_is_the_papers_training():
  for cfg in (cifar_apr.get_config('de'), cifar_at.get_config('cpu,de')):
    d = cfg.defence
    assert (d.adv.method, d.adv.batch) == ('de', 'separate')
    assert (d.penalty.method, d.penalty.fraction) == ('exact', 1.0)
  d = cifar_apr.get_config('cpu').defence
  assert (d.adv.method, d.adv.batch, d.penalty.method) == ('first_order', 'mixed', 'fd')
  assert cifar_at.get_config().defence.adv.method == 'first_order'


@pytest.mark.slow
def test_attention_map_and_attended_output():
  base = models.create('cnn6', num_classes=10, width=0.125)
  m = defences.Attended(base, kernel_size=5, rngs=nnx.Rngs(0))
  m.eval()
  x = jnp.asarray(toy.cifar_like(2, 32, 32))
  a = m.attention_map(x)
  assert a.shape == x.shape
  assert float(a.min()) > 0 and float(a.max()) < 1
  np.testing.assert_allclose(np.asarray(m(x)), np.asarray(base(a * x)), rtol=1e-6)
  assert m.attention.conv.kernel.shape == (5, 5, 3, 3)


class _Linear(nnx.Module):
  def __init__(self, w):
    self.w = nnx.Param(jnp.asarray(w))

  def __call__(self, x):
    return x.reshape(x.shape[0], -1) @ self.w


class _Tiny(nnx.Module):
  """A small smooth conv net without batch norm (mode-independent)."""

  def __init__(self, seed=0):
    rngs = nnx.Rngs(seed)
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(4 * 4 * 4, 5, rngs=rngs)

  def __call__(self, x):
    return self.dense(jnp.tanh(self.conv(x)).reshape(x.shape[0], -1))


def _penalty_config(method='exact', domain='pixels', fraction=1.0, h=0.1, adversarial=False):
  cfg = cifar_apr.get_config('test,no_attention')
  cfg.defence.adversarial = adversarial
  cfg.defence.beta = 1.0
  cfg.defence.penalty.method = method
  cfg.defence.penalty.domain = domain
  cfg.defence.penalty.fraction = fraction
  cfg.defence.penalty.h = h
  return cfg


@pytest.mark.parametrize('domain', ['pixels', 'normalised'])
def test_gradient_penalty_is_the_input_gradient_of_the_cross_entropy(domain):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4 * 4 * 3, 5)).astype(np.float32)
  x = jnp.asarray(toy.cifar_like(8, 4, 4))
  y = jnp.array([0, 3, 4, 1, 2, 0, 3, 4])
  term = apr.apr_term(_penalty_config(domain=domain))
  _, metrics = term(_Linear(w), x, y, None)
  # d(-log softmax(xW)_y)/dx = W (softmax(xW) - onehot(y)); in the normalised
  # domain z = (x - mean) / std, so grad_z = std * grad_x per channel.
  p = np.asarray(jax.nn.softmax(np.asarray(x).reshape(8, -1) @ w))
  g = ((p - np.eye(5)[np.asarray(y)]) @ w.T).reshape(8, 4, 4, 3)
  if domain == 'normalised':
    g = g * np.asarray(models.CIFAR10_STD)
  want = np.mean(np.sum(g * g, axis=(1, 2, 3)))
  assert float(metrics['grad_penalty']) == pytest.approx(want, rel=1e-4)
  # Double backprop: the penalty itself has a finite, non-zero gradient in the
  # weights (the term's gradient minus the clean loss's).
  gw = _penalty_gradient(_penalty_config(domain=domain), _Linear(w), x, y)
  assert np.all(np.isfinite(gw)) and np.abs(gw).sum() > 1e-3


def _penalty_gradient(cfg, model, x, y):
  """The parameter gradient of beta * R alone: the term's minus the clean loss's."""
  term = apr.apr_term(cfg)
  total = nnx.grad(lambda m: term(m, x, y, None)[0])(model)
  clean = nnx.grad(lambda m: apr.clean_term(m, x, y, None)[0])(model)
  return np.concatenate(
    [np.ravel(a - b) for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(clean), strict=True)]
  )


@pytest.mark.parametrize('domain', ['pixels', 'normalised'])
@pytest.mark.slow
def test_finite_difference_penalty_gradient_agrees_with_double_backprop(domain):
  """The estimator's parameter gradient is within 1% (relative L2 error) of
  double backprop's at h = 0.01, in float32; at the default h = 0.1 within 5%."""
  model = _Tiny()
  x = jnp.asarray(toy.cifar_like(16, 4, 4, seed=2))
  y = jnp.arange(16) % 5
  exact = _penalty_gradient(_penalty_config('exact', domain), model, x, y)
  assert np.abs(exact).sum() > 0
  for h, tol in ((0.01, 0.01), (0.1, 0.05)):
    fd = _penalty_gradient(_penalty_config('fd', domain, h=h), model, x, y)
    err = np.linalg.norm(fd - exact) / np.linalg.norm(exact)
    assert err < tol, (h, err)


@pytest.mark.slow
def test_finite_difference_penalty_in_the_mixed_batch_agrees_with_double_backprop():
  """With adversarial images in positions 0-1 of each block the penalty sits
  in positions 2-3: the estimator must pair each shifted image with its own
  clean loss there. The adversary's part is the same in both, so the
  difference of the two terms' gradients is the estimator's error alone."""
  model = _Tiny()
  x = jnp.asarray(toy.cifar_like(16, 4, 4, seed=6))
  y = jnp.arange(16) % 5

  def grad(method, h):
    term = apr.apr_term(_penalty_config(method, adversarial=True, fraction=0.25, h=h))
    g = nnx.grad(lambda m: term(m, x, y, jax.random.key(0))[0])(model)
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])

  exact, fd = grad('exact', 0.01), grad('fd', 0.01)
  pen = _penalty_gradient(_penalty_config('exact', fraction=0.25), model, x, y)
  assert np.linalg.norm(pen) > 1e-3
  assert np.linalg.norm(fd - exact) < 0.01 * np.linalg.norm(pen)


@pytest.mark.slow  # several compilations: seconds, kept out of the quick loop
def test_penalty_on_a_sub_batch_is_the_first_positions_of_each_block():
  model = _Tiny()
  x = jnp.asarray(toy.cifar_like(16, 4, 4, seed=3))
  y = jnp.arange(16) % 5
  _, full = apr.apr_term(_penalty_config())(model, x, y, None)
  _, part = apr.apr_term(_penalty_config(fraction=0.25))(model, x, y, None)
  sub = jnp.concatenate([x[0:2], x[8:10]])
  g, _ = apr.input_gradient(model, sub, jnp.concatenate([y[0:2], y[8:10]]), False)
  want = np.mean(np.sum(np.asarray(g) ** 2, axis=(1, 2, 3)))
  # Two positions of each block of 8 (a model without batch norm: examples
  # are independent, so the sub-batch's gradients are the whole batch's).
  assert float(part['grad_penalty']) == pytest.approx(want, rel=1e-5)
  assert float(part['grad_penalty']) != pytest.approx(float(full['grad_penalty']), rel=1e-3)


@pytest.mark.slow
def test_mixed_batch_replaces_the_first_positions_of_each_block(monkeypatch):
  """adv.fraction 2/8: positions 0-1 of every block are attacked, and the
  adversary of an APR step gets the penalty's input gradient (no backward of
  its own)."""
  seen = {}
  real = attack.first_order

  def spy(predict, x, y, **kw):
    seen['grads'], seen['logits'] = kw['grads'], kw['logits']
    seen['n'] = x.shape[0]
    return real(predict, x, y, **kw)

  monkeypatch.setattr(apr.attack, 'first_order', spy)
  cfg = _penalty_config('fd', adversarial=True, fraction=0.25)
  model = _Tiny()
  x = jnp.asarray(toy.cifar_like(16, 4, 4, seed=4))
  y = jnp.arange(16) % 5
  _, m = apr.apr_term(cfg)(model, x, y, jax.random.key(0))
  assert seen['n'] == 4 and seen['grads'] is not None
  rows = jnp.concatenate([x[0:2], x[8:10]])
  labels = jnp.concatenate([y[0:2], y[8:10]])
  g, lg = apr.input_gradient(model, rows, labels, differentiable=False)
  np.testing.assert_allclose(np.asarray(seen['grads']), np.asarray(g), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(seen['logits']), np.asarray(lg), rtol=1e-5, atol=1e-6)
  adv = real(
    models.as_predict(model), rows, labels, k=cfg.defence.adv.k, grads=g, logits=lg
  ).adv_images
  want_adv = optax.softmax_cross_entropy_with_integer_labels(model(adv), labels).mean()
  clean = jnp.concatenate([x[2:8], x[10:16]])
  want_clean = optax.softmax_cross_entropy_with_integer_labels(
    model(clean), jnp.concatenate([y[2:8], y[10:16]])
  ).mean()
  assert float(m['adv_loss']) == pytest.approx(float(want_adv), rel=1e-5)
  assert float(m['clean_loss']) == pytest.approx(float(want_clean), rel=1e-5)
  # Without a penalty the adversary takes its own (eval-mode) gradient.
  cfg.defence.beta = 0.0
  apr.apr_term(cfg)(model, x, y, jax.random.key(0))
  assert seen['grads'] is None


@pytest.mark.parametrize(
  'config, variant',
  [
    (cifar_apr, 'test'),
    (cifar_apr, 'test,de'),
    (cifar_apr, 'test,no_adv'),
    (cifar_apr, 'test,no_reg'),
    (cifar_at, 'test'),
    (cifar_at, 'test,de'),
  ],
)
@pytest.mark.slow
def test_every_variant_has_finite_gradients(config, variant):
  cfg = config.get_config(variant)
  model = build.build_model(cfg, 10)
  model.train()
  x = jnp.asarray(toy.cifar_like(8, 32, 32))
  y = jnp.arange(8)
  ((_, _, term),) = defences.loss_terms(cfg)
  grads = nnx.jit(nnx.grad(lambda m: term(m, x, y, jax.random.key(0))[0]))(model)
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert sum(np.abs(g).sum() for g in leaves) > 0


@pytest.mark.slow  # several compilations: seconds, kept out of the quick loop
@pytest.mark.parametrize('method', ['first_order', 'de'])
def test_adversary_changes_at_most_one_pixel_per_image(method):
  cfg = cifar_apr.get_config('test')
  cfg.defence.adv.method = method
  adversary = apr.make_adversary(cfg.defence.adv)
  model = models.create('cnn6', num_classes=10, width=0.125)
  x = jnp.asarray(toy.cifar_like(5, 32, 32, seed=4))
  y = jnp.arange(5)
  x_adv, fooled = jax.jit(
    lambda x, y: adversary(models.as_predict(model), x, y, jax.random.key(1))
  )(x, y)
  x_adv = np.asarray(x_adv)
  changed = np.any(x_adv != np.asarray(x), axis=-1).sum(axis=(1, 2))
  assert np.all(changed <= 1) and changed.sum() >= 1
  assert fooled.shape == (5,)
  np.testing.assert_array_equal(np.round(x_adv * 255) / 255, x_adv)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('adv.method', 'pgd', 'adv.method must be one of'),
    ('adv.batch', 'both', 'adv.batch must be one of'),
    ('penalty.method', 'approx', 'penalty.method must be one of'),
    ('penalty.domain', 'raw', 'penalty.domain must be one of'),
    ('adv.fraction', 0.3, 'multiple of 1/8'),
    ('adv.fraction', 1.0, 'needs both clean and adversarial'),
    ('penalty.fraction', 0.875, 'penalty is taken on clean images'),
    ('penalty.h', 0.0, 'penalty.h must be > 0'),
    ('alpha', 1.5, 'alpha must be in'),
  ],
)
def test_bad_loss_settings_are_clear_errors(field, value, message):
  cfg = cifar_apr.get_config('test')
  *path, last = field.split('.')
  target = cfg.defence
  for part in path:
    target = target[part]
  target[last] = value
  with pytest.raises(ValueError, match=message):
    defences.loss_terms(cfg)


@pytest.mark.slow  # 10 s of compile for an error message; the quick loop stays under 3 min
def test_batch_not_a_multiple_of_the_block_is_a_clear_error():
  cfg = cifar_apr.get_config('test')
  ((_, _, term),) = defences.loss_terms(cfg)
  model = build.build_model(cfg, 10)
  with pytest.raises(ValueError, match='multiple of 8'):
    term(model, jnp.asarray(toy.cifar_like(6, 32, 32)), jnp.arange(6), jax.random.key(0))
  with pytest.raises(ValueError, match='unknown config variant'):
    cifar_apr.get_config('no_attn')


def test_clean_term_is_the_mean_cross_entropy():
  m = _Linear(np.zeros((4 * 4 * 3, 5), np.float32))  # all logits 0: p = 1/5, argmax 0
  v, met = apr.clean_term(m, jnp.asarray(toy.gray_images(2, 4, 4)), jnp.array([0, 2]), None)
  assert float(v) == pytest.approx(np.log(5), rel=1e-6)
  assert float(met['accuracy']) == 0.5


def test_distillation_student_targets_are_the_teachers_tempered_probabilities():
  from jaxpix.defences import distillation

  rng = np.random.default_rng(1)
  wt = rng.normal(size=(4 * 4 * 3, 5)).astype(np.float32) * 5
  ws = rng.normal(size=(4 * 4 * 3, 5)).astype(np.float32)
  x = jnp.asarray(toy.cifar_like(3, 4, 4))
  y = jnp.array([0, 1, 2])
  t = 20.0
  teacher = _Linear(wt)
  value, met = distillation.distillation_term(teacher, t)(_Linear(ws), x, y, None)
  flat = np.asarray(x).reshape(3, -1)
  soft = np.asarray(jax.nn.softmax(flat @ wt / t))
  logq = np.asarray(jax.nn.log_softmax(flat @ ws / t))
  assert float(value) == pytest.approx(-(soft * logq).sum(1).mean(), rel=1e-5)
  np.testing.assert_allclose(np.asarray(distillation.soft_labels(flat @ wt, t)), soft, rtol=1e-6)
  # The teacher's own loss is the cross-entropy of softmax(logits / T).
  v, _ = distillation.tempered_term(t)(teacher, x, y, None)
  logp = np.asarray(jax.nn.log_softmax(flat @ wt / t))
  assert float(v) == pytest.approx(-logp[np.arange(3), np.asarray(y)].mean(), rel=1e-5)
  # No gradient reaches the teacher through the soft labels.
  g = nnx.grad(lambda m: distillation.distillation_term(m, t)(_Linear(ws), x, y, None)[0])(
    _Linear(wt)
  )
  assert np.abs(np.asarray(g['w'])).sum() == 0


@pytest.mark.slow
def test_distillation_trains_teacher_then_student(shared_data, tmp_path, monkeypatch):
  del shared_data
  from jaxpix.configs import cifar_dd

  cfg = cifar_dd.get_config('test')
  result = train.train_and_evaluate(cfg, str(tmp_path))
  assert 0 <= result['test_accuracy'] <= 1
  metas = {}
  for sub in ('teacher', '.'):
    ckpt = checkpoint.Checkpointer(tmp_path / sub / 'checkpoints')
    metas[sub] = ckpt.meta()
    ckpt.close()
  assert metas['teacher']['defence'] == 'dd_teacher' and metas['.']['defence'] == 'dd'
  student = [ln for ln in _lines(tmp_path) if 'loss' in ln]
  assert all('distill_loss' in ln and 0 <= ln['teacher_agreement'] <= 1 for ln in student)
  # A second run finds both finished: no training step runs, of the teacher or
  # the student (training is deterministic, so comparing the teacher's log or
  # parameters could not tell a retrained teacher from the kept one).
  steps_run = []
  real = train.compile_train_steps

  def counting(*a, **k):
    return tuple(lambda *args, s=s: steps_run.append(1) or s(*args) for s in real(*a, **k))

  monkeypatch.setattr(train, 'compile_train_steps', counting)
  again = train.train_and_evaluate(cfg, str(tmp_path))
  assert steps_run == [] and again['test_accuracy'] == result['test_accuracy']


# --------------------------------------------------------------------------- #
# Autoencoder before a frozen classifier
# --------------------------------------------------------------------------- #


def test_corruption_sets_up_to_k_pixels_to_extreme_colours():
  from jaxpix.defences import autoencoder

  x = jnp.asarray(toy.gray_images(64, 8, 8))
  out = np.asarray(autoencoder.corrupt(jax.random.key(0), x, max_pixels=3))
  changed = np.any(out != np.asarray(x), axis=-1)  # [B, H, W]
  counts = changed.sum(axis=(1, 2))
  assert counts.max() <= 3 and (counts == 0).any() and (counts == 3).any()
  assert set(np.unique(out[changed])) <= {0.0, 1.0}  # corners of the colour cube


@pytest.mark.slow
def test_autoencoder_pipeline_trains_against_a_frozen_classifier(shared_data, tmp_path):
  del shared_data
  from jaxpix.configs import cifar_autoencoder
  from jaxpix.defences import autoencoder
  from jaxpix.evaluation import metrics

  cfg = cifar_autoencoder.get_config('test')
  cfg.train.steps, cfg.train.log_every, cfg.train.lr = 40, 20, 3e-3
  train.train_and_evaluate(cfg, str(tmp_path))
  assert (tmp_path / 'classifier' / 'checkpoints').is_dir()  # trained first
  ln = [ln for ln in _lines(tmp_path) if 'loss' in ln]
  assert ln[-1]['recon_mse'] < ln[0]['recon_mse']
  # Eval mode rebuilds classifier(AE(x)); only the autoencoder is in the state.
  ev_cfg = cifar_autoencoder.get_config('test')
  ev_cfg.checkpoint = str(tmp_path)
  graphdef, state, _ = restore.load_state(ev_cfg, 10)
  model = nnx.merge(graphdef, state['params'], state['rest'])
  assert isinstance(model, autoencoder.Reconstructed)
  names = {str(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert names and all('autoencoder' in n for n in names)
  # The defended predict is one jittable function the attack runs through.
  predict = models.as_predict(model)
  x = toy.cifar_like(2, 32, 32)
  y = np.asarray(jax.jit(predict)(jnp.asarray(x))).argmax(1).astype(np.int32)
  r = attack.one_pixel(predict, x, y, key=jax.random.key(0), popsize=8, maxiter=1)
  assert np.all(r.queries <= 16)
  # Eval mode: the attack on the bare classifier, on the pipeline, and the
  # bare classifier's adversarial images through the autoencoder (Table 4).
  ev_cfg.mode = 'eval'
  res = evaluation.evaluate(ev_cfg, str(tmp_path / 'eval'))
  t, att = res['autoencoder_table4'], res['attacks']
  assert set(att) == {'de', 'de_classifier'}
  # Every chosen image the bare classifier gets right is attacked there; the
  # pipeline is attacked only where it is right itself, its own mistakes count
  # as fooled (so no image the autoencoder breaks is dropped).
  n = res['num_images']
  assert att['de_classifier']['attacks'] == n > 0
  test = data.load_test(ev_cfg.data)
  pipe_ok = np.asarray(jax.jit(predict)(jnp.asarray(data.to_float(test.images)))).argmax(1) == (
    test.labels
  )
  n_ok = int(pipe_ok[res['images']].sum())
  assert att['de']['attacks'] == n_ok
  assert t['counts']['asr_adaptive'] == [att['de']['successes'] + n - n_ok, n]
  assert t['asr_no_defence'] == att['de_classifier']['attack_success_rate']
  assert t['counts']['defence_rate'][1] == att['de_classifier']['successes']
  assert t['clean_accuracy_cost'] == pytest.approx(
    t['clean_accuracy_classifier'] - t['clean_accuracy_pipeline']
  )
  assert t['clean_accuracy_pipeline'] == res['clean_accuracy']
  # Transfer, recounted from the bare attack's log: its adversarial images
  # through the pipeline, counted where the bare attack fooled.
  recs = [
    json.loads(ln)
    for ln in (tmp_path / 'eval' / 'attack_de_classifier.jsonl').read_text().splitlines()
    if '"key"' in ln
  ]
  adv = metrics.adversarial_images(recs, data.to_float(test.images), ev_cfg.eval.mode)
  wrong = (
    np.asarray(jax.jit(predict)(jnp.asarray(adv))).argmax(1)
    != test.labels[[r['index'] for r in recs]]
  )
  fooled = np.array([r['success'] for r in recs])
  still = wrong & fooled
  assert t['counts']['asr_transfer'] == [int(still.sum()), len(recs)]
  assert t['counts']['defence_rate'] == [
    int(sum(r['success'] for r in recs) - still.sum()),
    att['de_classifier']['successes'],
  ]
  assert t['counts']['performance_loss'] == [int((wrong & ~fooled).sum()), n - int(still.sum())]
  # A classifier named by defence.classifier is used as it is, not trained on
  # to this run's longer schedule: a second autoencoder trained 60 steps in
  # front of the 40-step classifier leaves the classifier's log and checkpoint.
  log_before = (tmp_path / 'classifier' / 'metrics.jsonl').read_text()
  cfg2 = cifar_autoencoder.get_config('test')
  cfg2.train.steps, cfg2.train.log_every = 60, 30
  cfg2.defence.classifier = str(tmp_path / 'classifier')
  train.train_and_evaluate(cfg2, str(tmp_path / 'ae2'))
  assert (tmp_path / 'classifier' / 'metrics.jsonl').read_text() == log_before
  ckpt = checkpoint.Checkpointer(tmp_path / 'classifier' / 'checkpoints')
  assert ckpt.latest_step() == 40
  ckpt.close()
  assert not (tmp_path / 'ae2' / 'classifier').exists()
  assert [ln['step'] for ln in _lines(tmp_path / 'ae2') if 'loss' in ln][-1] == 60


@pytest.mark.slow
def test_an_autoencoder_is_the_same_before_any_classifier_and_is_reused(shared_data, tmp_path):
  del shared_data
  from jaxpix.configs import cifar_autoencoder

  def config(model):
    c = cifar_autoencoder.get_config(f'test,{model}' if model else 'test')
    c.train.steps, c.train.log_every = 12, 6
    return c

  def ae_params(workdir, c):
    c = config(c)
    c.checkpoint = str(workdir)
    _, state, step = restore.load_state(c, 10, classifier=lambda x: x)
    return step, jax.tree.leaves(state['params'])

  # Trained before two different classifiers, the autoencoder comes out the
  # same: its loss never reaches the classifier (what makes reusing it exact).
  train.train_and_evaluate(config(''), str(tmp_path / 'a'))
  train.train_and_evaluate(config('lenet'), str(tmp_path / 'b'))
  (sa, pa), (sb, pb) = ae_params(tmp_path / 'a', ''), ae_params(tmp_path / 'b', 'lenet')
  assert sa == sb == 12
  for x, y in zip(pa, pb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Reused: a copy of it becomes the run's checkpoint; only the classifier trains.
  c = config('lenet')
  c.defence.autoencoder = str(tmp_path / 'a')
  res = train.train_and_evaluate(c, str(tmp_path / 'c'))
  sc, pc = ae_params(tmp_path / 'c', 'lenet')
  assert sc == 12
  for x, y in zip(pa, pc, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  lines = _lines(tmp_path / 'c')
  assert [ln['autoencoder_from'] for ln in lines if 'autoencoder_from' in ln] == [
    c.defence.autoencoder
  ]
  assert not [ln for ln in lines if 'loss' in ln]  # no autoencoder step ran
  assert (tmp_path / 'c' / 'classifier' / 'checkpoints').is_dir()

  # The pipeline of this run's classifier is what the final accuracy measures.
  def accuracy(record):
    (value,) = [v for k, v in record.items() if k.endswith('_accuracy')]
    return value

  assert accuracy(res) == accuracy(_lines(tmp_path / 'b')[-1])
  # Resumed, it is a finished run (nothing copied or trained again), however
  # the reused run's path is spelled then (the field is read at the start only).
  c.defence.autoencoder = str(tmp_path / 'b' / '..' / 'a')
  assert accuracy(train.train_and_evaluate(c, str(tmp_path / 'c'))) == accuracy(res)
  assert len([ln for ln in _lines(tmp_path / 'c') if 'autoencoder_from' in ln]) == 1
  with checkpoint.Checkpointer(tmp_path / 'c' / 'checkpoints') as ckpt:
    assert ckpt.steps() == [12]
  # One trained with other settings is refused, naming what differs.
  for field, value, match in (
    ('defence.ae_width', 16, 'defence.ae_width: saved 8, now 16'),
    ('train.steps', 24, 'total steps: saved 12, now 24'),
  ):
    d = config('lenet')
    d.defence.autoencoder = str(tmp_path / 'a')
    configs.set_field(d, field, value)
    with pytest.raises(ValueError, match=match):
      train.train_and_evaluate(d, str(tmp_path / f'refused_{value}'))
    assert not (tmp_path / f'refused_{value}' / 'classifier').exists()  # refused first
  # Evaluated with another width, the run is refused naming the field (the
  # model's own structure finds it); rebuilt from its own config.json, it loads.
  d = config('')
  d.defence.ae_width, d.checkpoint = 16, str(tmp_path / 'a')
  with pytest.raises(checkpoint.CheckpointError, match='defence.ae_width: saved 8, now 16'):
    restore.load_predict(d, 10)
  assert restore.from_workdir(tmp_path / 'a').config.defence.ae_width == 8
  d = config('lenet')
  d.defence.autoencoder = str(tmp_path / 'a' / 'classifier')  # no defence: not an autoencoder
  with pytest.raises(checkpoint.CheckpointError, match="defence 'none', not an autoencoder"):
    train.train_and_evaluate(d, str(tmp_path / 'refused_none'))
  # Only the autoencoder defence has one to reuse.
  e = cifar_apr.get_config('test')
  e.defence.autoencoder = str(tmp_path / 'a')
  with pytest.raises(
    ValueError, match="names an autoencoder to reuse, but config.defence.name is 'apr'"
  ):
    train.train_and_evaluate(e, str(tmp_path / 'refused_apr'))


def test_named_pretrained_model_without_checkpoint_is_a_clear_error(shared_data, tmp_path):
  del shared_data
  from jaxpix.configs import cifar_autoencoder, cifar_dd

  for cfg, key in (
    (cifar_autoencoder.get_config('test'), 'classifier'),
    (cifar_dd.get_config('test'), 'teacher'),
  ):
    cfg.defence[key] = str(tmp_path / 'nothing_here')
    with pytest.raises(checkpoint.CheckpointError, match=f'defence.{key}=.*holds no checkpoint'):
      train.train_and_evaluate(cfg, str(tmp_path / key))
    assert not (tmp_path / 'nothing_here').exists()  # nothing trained into it


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_figures_are_written_as_png(tmp_path):
  from PIL import Image

  from jaxpix import figures

  base = models.create('cnn6', num_classes=10, width=0.125)
  m = defences.Attended(base, rngs=nnx.Rngs(0))
  m.eval()
  x = toy.cifar_like(20, 32, 32)
  y = np.arange(20) % 10
  p = figures.attention_maps(m, x, y, tmp_path / 'att.png')
  w, h = Image.open(p).size
  assert w > 10 * 100 and h > 200  # ten classes side by side
  predict = models.as_predict(base)
  yy = np.asarray(jax.jit(predict)(jnp.asarray(x[:6]))).argmax(1).astype(np.int32)
  r = attack.one_pixel(predict, x[:6], yy, key=jax.random.key(0), popsize=16, maxiter=3)
  g = figures.adversarial_gallery(r, x[:6], tmp_path / 'gallery.png', n=4)
  assert Image.open(g).size[0] > 4 * 100


@pytest.mark.parametrize(
  'name', ['lenet', 'pure_cnn', 'nin', 'resnet32', 'densenet_bc100', 'wrn16_8']
)
@pytest.mark.slow
def test_autoencoder_fits_in_front_of_every_zoo_classifier(name):
  from jaxpix.configs import cifar_autoencoder

  cfg = cifar_autoencoder.get_config(f'test,{name}')
  cfg.model.width = 0.25
  assert cfg.model.name == name
  classifier = models.as_predict(build.build_model(build.frozen_config(cfg, 'classifier'), 10))
  model = build.build_model(cfg, 10, classifier)
  x = jnp.asarray(toy.cifar_like(2, 32, 32))
  ((_, _, loss_fn),) = defences.loss_terms(cfg)
  # Jitted: op-by-op gradients through DenseNet-BC-100 take a minute on the CPU.
  loss, grads = nnx.jit(
    nnx.value_and_grad(lambda m: loss_fn(m, x, jnp.zeros(2, jnp.int32), jax.random.key(0))[0])
  )(model)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert np.isfinite(float(loss)) and leaves and all(np.all(np.isfinite(g)) for g in leaves)
  assert jax.jit(models.as_predict(model))(x).shape == (2, 10)


def test_autoencoder_trains_with_its_own_weight_decay():
  from jaxpix.configs import cifar_autoencoder

  params = {'w': jnp.ones(3)}

  def moved(cfg) -> float:  # |update| for a zero gradient: only weight decay moves it
    tx = build.optimizer_for(cfg, 10)
    update, _ = tx.update({'w': jnp.zeros(3)}, tx.init(params), params)
    return float(jnp.abs(update['w']).max())

  c = cifar_autoencoder.get_config('test')
  c.train.schedule = 'constant'
  assert c.defence.ae_weight_decay == 0 and c.train.weight_decay > 0
  assert moved(c) == 0  # the autoencoder: no decay
  classifier = build.frozen_config(c, 'classifier')
  assert moved(classifier) > 0  # the classifier it guards: train.weight_decay
  # The classifier's record is what it was before the field existed, so
  # classifiers trained then are reused as they are.
  assert (
    configs.differences({}, {'defence.ae_weight_decay': classifier.defence.ae_weight_decay}) == []
  )
  c.defence.ae_weight_decay = 1e-3
  assert moved(c) > 0
  c.defence.ae_weight_decay = -1.0  # < 0: train.weight_decay, as every run before
  assert moved(c) == moved(classifier)
