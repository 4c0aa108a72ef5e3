"""Ingest: everything that receives data from peers (DICOM C-STORE, HL7 orders) and makes it
durable before acknowledging it. Protocol code here only persists and acknowledges; business
logic runs from hooks after the data is safely stored."""
