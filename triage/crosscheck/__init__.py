"""A second synthetic CT generator, written apart from :mod:`triage.synth.ct` and never used
to train: an independent look at the ich and pe models (``triage models crosscheck``).

Its painters (:mod:`.head`, :mod:`.chest`) were written from the radiology alone, without
reading the training generator, its feature windows or the input checks, so that what the
models learned from our own phantoms is tested on phantoms made differently. Like every
phantom here, these are synthetic: a figure measured on them is evidence about robustness, not
a clinical claim.
"""
