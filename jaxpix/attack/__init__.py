"""One-pixel / few-pixel attacks, batched and compiled with ``jit``/``vmap``.

``from jaxpix import attack``; then ``attack.one_pixel(predict, images, labels,
key=jax.random.key(0))``. ``predict`` is any pure JAX function from float
images in [0, 1] [B, H, W, C] to logits [B, K].
"""

from jaxpix.attack.attacks import AttackResult as AttackResult
from jaxpix.attack.attacks import FixedBudgetResult as FixedBudgetResult
from jaxpix.attack.attacks import de_fixed_budget as de_fixed_budget
from jaxpix.attack.attacks import extreme_colour as extreme_colour
from jaxpix.attack.attacks import one_pixel as one_pixel
from jaxpix.attack.perturb import apply as apply_pixels
from jaxpix.attack.perturb import decode as decode
from jaxpix.attack.search import DEConfig as DEConfig
from jaxpix.attack.search import KERAS as KERAS
from jaxpix.attack.search import PRESETS as PRESETS
from jaxpix.attack.search import SU as SU
