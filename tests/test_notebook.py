"""examples/quickstart.ipynb, executed in a real kernel, so that it cannot rot."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_its_results(shared_data):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  nb = nbformat.read(ROOT / 'examples' / 'quickstart.ipynb', as_version=4)
  client = nbclient.NotebookClient(
    nb,
    timeout=600,
    kernel_name='python3',
    resources={'metadata': {'path': str(ROOT / 'examples')}},
  )
  client.execute()  # raises on any cell's error
  text = '\n'.join(
    o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
  )
  images = sum(
    'image/png' in o.get('data', {})
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.get('outputs', [])
  )
  # The model learned something, the attack fooled some of the 16 images and
  # the notebook drew its gallery and curves inline.
  acc = float(re.search(r'clean accuracy on the 1000 test images: ([0-9.]+)%', text).group(1))
  assert acc > 30
  fooled = int(re.search(r'fooled (\d+) of 16 images', text).group(1))
  assert 0 < fooled <= 16
  assert 'gradient-ranked: fooled' in text and 'behind the defence: fooled' in text
  # The zoo's APR model scores its record; its misclassified images are not attacked.
  assert 'clean accuracy 81.8% (recorded: 81.8%)' in text
  assert re.search(r'\d+ of 24 misclassified \(not attacked\); fooled \d+ of the other', text)
  assert images >= 3
  del shared_data


@pytest.mark.slow
def test_the_test_extras_run_the_notebook_from_the_command_line():
  # `jupyter nbconvert --to notebook --execute examples/quickstart.ipynb` is how
  # a user runs it outside the tests: the `jupyter` command (jupyter-core) beside
  # this interpreter must find its nbconvert subcommand.
  nbconvert = pytest.importorskip('nbconvert')
  jupyter = pathlib.Path(sys.executable).parent / 'jupyter'
  assert jupyter.is_file(), f'{jupyter} missing: `pip install -e .[test]` installs it'
  r = subprocess.run([jupyter, 'nbconvert', '--version'], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == nbconvert.__version__
