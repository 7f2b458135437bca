"""APR's attention maps (the APR paper's section V.F) of a saved checkpoint:
the figure and how much the maps vary.

    python -m jaxpix.repro.attention_maps zoo:resnet18_w0.25-apr \
        [--config cifar_apr:cpu] [--images 500] [--out attention_maps.png]

Draws ``jaxpix.figures.attention_maps`` (one test image per class above its
map A(x), on the common 0-1 scale and stretched to its own range) and prints
``jaxpix.figures.attention_summary`` over the first ``--images`` test images
as JSON; docs/results.md quotes what this prints (the retrained APR, the
zoo's ``resnet18_w0.25-apr``). The model is a zoo name (``zoo:NAME``) or a
training workdir; ``--config`` must be the config it was trained with
(restoring refuses another model, naming the fields).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from jaxpix import configs, data, figures, restore


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('checkpoint', help='zoo:NAME or a training workdir of an APR (attention) run')
  ap.add_argument('--config', default='cifar_apr:cpu', help='the config it was trained with')
  ap.add_argument('--images', type=int, default=500, help='first test images to summarise')
  ap.add_argument('--out', type=pathlib.Path, help='write the figure here')
  args = ap.parse_args(argv)
  config = configs.load(args.config)
  if not config.defence.attention:
    ap.error(f'{args.config} has no attention (defence.attention is False): give an APR config')
  config.checkpoint = args.checkpoint
  model = restore.load_predict(config, 10).model
  test = data.load_npz(config.data.dataset, config.data.eval_split, config.data.dir)
  images = data.to_float(test.images[: args.images])
  summary = dict(checkpoint=args.checkpoint, **figures.attention_summary(model, images))
  if args.out:
    figures.attention_maps(
      model,
      images,
      test.labels[: args.images],
      args.out,
      class_names=data.class_names(config.data.dataset, config.data.dir),
    )
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  main()
