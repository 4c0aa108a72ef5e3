"""Synthetic CT painters written apart from :mod:`triage.synth.ct`: an independent look at the
ich and pe models (``triage models crosscheck``, docs/crosscheck.md).

Painter "a" (:mod:`.head`, :mod:`.chest`) and painter "b" (:mod:`.head_b`, :mod:`.chest_b`)
were written from the radiology alone, by other hands, without reading the training
generator, its feature windows or the input checks (painter b without reading painter a
either), so that what the models learned from our own phantoms is tested on phantoms made
differently. Painter a may also give training phantoms (:mod:`triage.training.second_source`);
a model trained on it is judged by painter b only. Like every phantom here, these are
synthetic: a figure measured on them is evidence about robustness, not a clinical claim.
"""

# painter -> task -> the module that paints it (``paint``, ``write_study``)
PAINTERS: dict[str, dict[str, str]] = {
    "a": {"ich": "triage.crosscheck.head", "pe": "triage.crosscheck.chest"},
    "b": {"ich": "triage.crosscheck.head_b", "pe": "triage.crosscheck.chest_b"},
}
