"""HL7 v2 over MLLP: framing, parsing of RIS orders, ACKs, outbound ORM/ORU and a client."""
