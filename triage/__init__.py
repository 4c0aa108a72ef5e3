"""Triage: a worklist triage and prioritization engine for emergency radiology.

Data path (one subpackage per step):

    ingest (DICOM C-STORE, HL7 orders) -> store -> completion -> routing
    -> inference (Triton) -> scoring -> outbound (HL7 ORM/ORU to the RIS) -> api (worklist)

The AI models shipped with the engine are trained on synthetic phantoms and are not for
clinical use. The engine only ever raises a study's priority; it never lowers a study below
its ordered priority and never hides a study.
"""

__version__ = "0.1.0"
