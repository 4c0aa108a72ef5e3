"""Synthetic studies with a known label, written as real DICOM files.

Used by ``make demo`` (a worklist to triage without patient data), by the tests (known ground
truth end to end), training and validation. See :mod:`triage.synth.ct`.
"""

from triage.synth.ct import SyntheticStudy, write_ctpa, write_head_ct

__all__ = ["SyntheticStudy", "write_ctpa", "write_head_ct"]
