"""Files of received DICOM instances: the names other modules import, from the modules that own
them. Plain functions, no networking, so the Storage SCP stays thin and each rule is
unit-tested:

- :mod:`~triage.ingest.dicom_paths`: where an instance is stored, never outside ``data_dir``;
- :mod:`~triage.ingest.dicom_walk`: whether a data set can be decoded (structure walk,
  compressed pixel fragments, available decoders);
- :mod:`~triage.ingest.dicom_header`: the header decoded and indexed for the ``Instance`` and
  ``Study`` tables;
- :mod:`~triage.ingest.dicom_meta`: the File Meta Information we write, and a stored file read
  back.

How files are made durable is :mod:`triage.store.durable`. New code imports from the modules.
"""

from __future__ import annotations

from triage.ingest.dicom_header import (
    INDEXED_KEYWORDS,
    InstanceFields,
    RawHeader,
    index_header,
    index_instance,
    read_dataset_header,
    read_header,
)
from triage.ingest.dicom_meta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    encode_file_meta,
    read_instance_file,
)
from triage.ingest.dicom_paths import DICOM_SUBDIR, UID_MAX_LEN, is_valid_uid, safe_instance_path
from triage.ingest.dicom_walk import (
    CODESTREAM_STARTS,
    Scan,
    check_codestream,
    check_encoding,
    decoder_available,
    scan_dataset,
)

__all__ = [
    "CODESTREAM_STARTS",
    "DICOM_SUBDIR",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "INDEXED_KEYWORDS",
    "UID_MAX_LEN",
    "InstanceFields",
    "RawHeader",
    "Scan",
    "check_codestream",
    "check_encoding",
    "decoder_available",
    "encode_file_meta",
    "index_header",
    "index_instance",
    "is_valid_uid",
    "read_dataset_header",
    "read_header",
    "read_instance_file",
    "safe_instance_path",
    "scan_dataset",
]
