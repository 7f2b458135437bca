"""The numbers the two papers report, quoted for the tables beside ours, and
the layout of each table (which metrics, in which order).

Rates are fractions. Nothing here is measured by jaxpix.
"""

# APR paper (IJRASET 12(VII), 2024), CIFAR-10 with ResNet-18/VGG-16 (the table
# does not say which), mean of 5 runs: (clean accuracy, ASR, robustness).
APR_TABLE1 = {
  'No Defence': (0.932, 0.7097, 0.2903),
  'AT': (0.873, 0.4532, 0.5468),
  'IT': (0.891, 0.3876, 0.6124),
  'DD': (0.865, 0.4189, 0.5811),
  'APR': (0.908, 0.2143, 0.7857),
}
# Table 3, the ablation on CIFAR-10.
APR_TABLE3 = {
  'Full APR': (0.908, 0.2143, 0.7857),
  'w/o Pixel-wise Attention': (0.895, 0.2876, 0.7124),
  'w/o Adversarial Training': (0.917, 0.3521, 0.6479),
  'w/o Regularization': (0.902, 0.2489, 0.7511),
}
# Table 4: APR's (training time increase, inference time increase) over the
# undefended model, i.e. ratio - 1.
APR_TABLE4 = {'ResNet-18': (0.273, 0.086), 'VGG-16': (0.315, 0.092)}

# The autoencoder paper's Table 4 (1,000 attacks per model): attack success
# rate without defence, after reconstruction, defence rate and performance
# loss, as printed. jaxpix/defences/autoencoder.py derives their definitions
# from these counts.
AE_TABLE4 = {
  'LeNet': dict(asr_no_defence=0.612, asr_after=0.217, defence_rate=0.645, performance_loss=0.192),
  'Pure CNN': dict(
    asr_no_defence=0.162, asr_after=0.023, defence_rate=0.858, performance_loss=0.134
  ),
  'NiN': dict(asr_no_defence=0.286, asr_after=0.051, defence_rate=0.822, performance_loss=0.132),
  'ResNet': dict(asr_no_defence=0.300, asr_after=0.048, defence_rate=0.840, performance_loss=0.127),
  'DenseNet': dict(
    asr_no_defence=0.252, asr_after=0.045, defence_rate=0.821, performance_loss=0.160
  ),
  'WideResNet': dict(
    asr_no_defence=0.221, asr_after=0.024, defence_rate=0.891, performance_loss=0.107
  ),
}

# The tables a suite can measure (config.suite.table): which metrics, and the
# paper's numbers by row name.
DEFENCE_METRICS = (
  ('clean_accuracy', 'Clean Accuracy'),
  ('asr', 'Attack Success Rate'),
  ('robustness', 'Robustness'),
  # Not in the papers: correct and not fooled, over a fixed image set
  # (eval.image_set = 'fixed'), comparable across rows (RobustBench's).
  ('robust_accuracy', 'Robust accuracy (fixed images)'),
  # ... and not fooled by the other untargeted attacks either (the exhaustive
  # or gradient-ranked extreme-colour search): the worst case.
  ('robust_accuracy_all', 'Robust accuracy, every attack (fixed images)'),
  # With eval.targeted: Su et al.'s targeted rate, the images fooled towards
  # at least one other class (the APR paper's No Defence 70.97% is this
  # figure of Su et al.'s, quoted as an ASR).
  ('targeted_any', 'Targeted: fooled towards >= 1 class'),
)
# The rows every other row is tested against (besides the first, no defence).
APR_ROWS = ('APR', 'Full APR')
AE_METRICS = (
  ('asr_no_defence', 'ASR, no defence'),
  ('asr_adaptive', 'ASR after reconstruction (attacking the pipeline)'),
  ('asr_transfer', 'ASR after reconstruction (transfer)'),
  ('defence_rate', 'Defence rate'),
  ('performance_loss', 'Performance loss'),
  ('clean_accuracy_cost', 'Clean accuracy cost (not in the paper)'),
)
TABLES = {
  'apr_table1': dict(
    kind='defences', paper=APR_TABLE1, title='APR paper, Table 1: defences on CIFAR-10'
  ),
  'apr_table3': dict(
    kind='defences', paper=APR_TABLE3, title='APR paper, Table 3: ablation on CIFAR-10'
  ),
  'autoencoder': dict(
    kind='autoencoder',
    paper=AE_TABLE4,
    title='Autoencoder paper, Table 4: the defence on the model zoo',
  ),
}
