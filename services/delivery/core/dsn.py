"""The DSN parameters (RFC 3461) a job passes on to a server that offers DSN.

A relaying MTA hands NOTIFY, ORCPT, RET and ENVID on as it received them,
xtext-encoded again; to a server without DSN it sends none and reports a
requested success itself as "relayed".
"""

from __future__ import annotations

from libs.common.contract.events import DeliveryJob, Recipient
from libs.common.mail import xtext


def mail_parameters(job: DeliveryJob) -> list[str]:
    params: list[str] = []
    if job.ret is not None:
        params.append(f"RET={job.ret}")
    if job.envid:
        params.append(f"ENVID={xtext.encode(job.envid)}")
    return params


def rcpt_parameters(recipient: Recipient) -> list[str]:
    params: list[str] = []
    notify = [n.upper() for n in recipient.notify]
    if notify:
        params.append("NOTIFY=" + ",".join(notify))
    if recipient.orcpt:
        params.append(f"ORCPT={xtext.encode_orcpt(recipient.orcpt)}")
    return params
