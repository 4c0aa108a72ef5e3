"""Training and validation of the ``ich`` and ``pe`` models on synthetic phantoms.

- :mod:`~triage.training.data`: phantoms on the model grid with targets, disjoint seed ranges;
- :mod:`~triage.training.nets`: the small 2.5D CNN (PyTorch, optional ``train`` group);
- :mod:`~triage.training.train`: training, operating point, ONNX export (``triage models train``);
- :mod:`~triage.training.validate`: held-out validation through Triton
  (``triage models validate``), with :mod:`~triage.training.metrics` and a PNG ROC plot.

Only training needs PyTorch; serving needs onnxruntime. Trained on synthetic phantoms; not for
clinical use.
"""
