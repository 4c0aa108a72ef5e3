"""Association negotiation (PS3.8 7.1.1, 9.3.2-9.3.3): an A-ASSOCIATE-RQ's variable items
decoded and negotiated with pynetdicom (presentation contexts, SCP/SCU roles), the
A-ASSOCIATE-AC's items encoded, and the result as immutable values (:class:`Negotiated`,
:class:`AcceptedContext`) that associations sending the same request can share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from triage.errors import DicomProtocolError
from triage.ingest.dicom_pdu import (
    APPLICATION_CONTEXT,
    ASSOCIATE_RQ,
    HEADER,
    INVALID_PARAMETER,
)

#: Bytes of an A-ASSOCIATE-RQ/AC before its variable items (header, version, AE titles).
RQ_FIXED = 74


def ae_title(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("ascii", "replace").strip(" \x00")


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """One accepted presentation context, as negotiated: an immutable value, so that the
    negotiation remembered for one association (``UpperLayerServer.negotiate`` in
    :mod:`triage.ingest.dicom_ul`) can be
    shared by every association that sends the same request, and none can change what the
    others see."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    #: We act as SCP for this SOP class (the peer may send us its requests), and as SCU.
    as_scp: bool = True
    as_scu: bool = False


#: An association's accepted contexts before negotiation: none.
NO_CONTEXTS: Mapping[int, AcceptedContext] = MappingProxyType({})


@dataclass(frozen=True)
class Negotiated:
    """What an A-ASSOCIATE-RQ's variable items (application context, presentation contexts,
    user information) negotiate to, and the AC's variable items that answer them. Read-only
    all through: ``accepted`` is a read-only mapping of frozen contexts."""

    application_context: str
    peer_max_pdu: int
    accepted: Mapping[int, AcceptedContext]
    ac_items: bytes


def negotiate(
    items: bytes,
    supported: list[PresentationContext] | tuple[PresentationContext, ...],
    *,
    max_pdu: int,
    implementation_class_uid: str = "",
    implementation_version_name: str = "",
) -> Negotiated:
    """Decode the variable items of an A-ASSOCIATE-RQ with pynetdicom, negotiate presentation
    contexts and SCP/SCU roles (:func:`pynetdicom.presentation.negotiate_as_acceptor`), and
    encode the AC's items. Raises :class:`DicomProtocolError` when the items cannot be decoded."""
    rq = A_ASSOCIATE_RQ()
    try:
        placeholder = HEADER.pack(ASSOCIATE_RQ, 0, RQ_FIXED - 6 + len(items))
        rq.decode(placeholder + b"\x00\x01\x00\x00" + b"A" * 32 + bytes(32) + items)
        primitive = rq.to_primitive()
    except Exception as exc:
        raise DicomProtocolError(INVALID_PARAMETER, f"undecodable A-ASSOCIATE-RQ: {exc}") from exc
    roles = {
        UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
        for item in primitive.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    results, role_items = negotiate_as_acceptor(
        primitive.presentation_context_definition_list, list(supported), roles or None
    )
    ac = A_ASSOCIATE()
    ac.application_context_name = UID(APPLICATION_CONTEXT)
    ac.calling_ae_title = "A" * 16
    ac.called_ae_title = "A" * 16
    ac.result, ac.result_source = 0x00, 0x01
    ac.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    user: list[object] = [max_length]
    if implementation_class_uid:
        uid = ImplementationClassUIDNotification()
        uid.implementation_class_uid = UID(implementation_class_uid)
        user.append(uid)
    if implementation_version_name:
        name = ImplementationVersionNameNotification()
        name.implementation_version_name = implementation_version_name
        user.append(name)
    ac.user_information = [*user, *role_items]  # type: ignore[list-item]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    accepted = {
        int(cx.context_id): AcceptedContext(  # type: ignore[arg-type]
            context_id=int(cx.context_id),  # type: ignore[arg-type]
            abstract_syntax=str(cx.abstract_syntax),
            transfer_syntax=str(cx.transfer_syntax[0]),
            as_scp=bool(cx.as_scp),
            as_scu=bool(cx.as_scu),
        )
        for cx in results
        if cx.result == 0x00
    }
    return Negotiated(
        application_context=str(primitive.application_context_name or ""),
        peer_max_pdu=int(primitive.maximum_length_received or 0),
        accepted=MappingProxyType(accepted),
        ac_items=bytes(pdu.encode())[RQ_FIXED:],
    )
