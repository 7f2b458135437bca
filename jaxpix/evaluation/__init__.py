"""Evaluation of a trained checkpoint (``config.mode == 'eval'``).

    python run.py --config configs/cifar_apr.py --config.mode=eval \
        --config.checkpoint=workdir/apr --workdir workdir/apr_eval

Loads the model (and its defence pipeline) named by the config from
``config.checkpoint`` (a training workdir, or its ``checkpoints/`` folder; the
step ``config.eval.step``, 0 = the latest), refuses a checkpoint of another
model or defence, and reports:

1. clean accuracy on the test split (``config.data.eval_split``);
2. the one-pixel attack with the papers' protocol (``config.eval``): only
   correctly classified test images, ``num_images`` of them drawn with
   ``eval.seed``, the full DE budget (population 400, 100 generations); the
   attack success rate (ASR), robustness = 1 - ASR, mean queries and the mean
   confidence of the successful adversarial images; optionally the targeted
   attack towards every other class (Su et al.) and the exhaustive
   extreme-colour search as a second, stronger attack;
3. for the autoencoder defence, the autoencoder paper's Table 4 metrics
   (attacking the bare classifier too, and passing its adversarial images
   through the autoencoder).

Every attacked image's result is appended to ``attack_<name>.jsonl`` in the
workdir as it finishes. Running the same command again after a kill continues
where it stopped: images already in the file are not attacked again, and as
each image's search depends only on its image and its key
``fold_in(key(eval.seed), index)``, the final numbers equal an uninterrupted
run's (bitwise on CPU, tested; on a GPU a resumed run feeds the model batches
of other shapes, and kernels chosen per shape may round differently, so a
near-tie can go the other way: equal in distribution, not bit for bit). The
file's first line records the protocol (model, defence, step, a hash of the
parameters, the attack's settings, the chosen images); a run with another
protocol refuses to mix into it. ``session`` lines record the commit and
device of every run that wrote to it.

Outputs: ``results.json`` (every number with its config, seed, commit and
device), ``results.md`` (the same numbers as a table), ``asr_vs_budget.png``
and ``gallery.png``.

Modules: ``protocol`` (settings, image choice, the attacks, the protocol),
``attack_log`` (the per-image log), ``metrics`` (summaries, Table 4),
``runner`` (the run).
"""

from jaxpix.evaluation.runner import evaluate

__all__ = ['evaluate']
