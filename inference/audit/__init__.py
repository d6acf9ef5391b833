"""Privacy audit: attack dropped first-layer activations and measure what leaks.

* :mod:`dropstream.inference.audit.metrics` -- Pearson ``r``, SNR (dB) and band-power errors.
* :mod:`dropstream.inference.audit.attacks` -- naive, mask-aware ridge, Gaussian-prior MAP and joint
  (overlapping-window) least-squares attackers (numpy / scipy).
* :mod:`dropstream.inference.audit.decoder` -- the learned decoder (torch), trained on other
  recordings.
* :mod:`dropstream.inference.audit.encryption` -- the same first layer under CKKS homomorphic
  encryption.
* :mod:`dropstream.inference.audit.report` -- data loading, the audit run and its table.
"""
