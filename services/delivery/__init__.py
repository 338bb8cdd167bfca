"""delivery: stateless workers that attempt delivery jobs, scaled out freely.

Consumes: DeliveryJob commands from the MAILBUS_JOBS work queue (shared consumer).
Reads: bodies from the `MAILBUS_BODIES` stream (direct get); MX and address records
(dnspython, `dns.servers`).
Delivers: to the MX hosts of each domain (`delivery.mode: mx`) or the relay host
(SMTP AUTH or POP3-before-SMTP), with STARTTLS per `delivery.tls`; jobs to one
destination fetched together share an SMTP session; local recipients go to their
mailbox (JetStream store or LMTP).
Publishes: one DeliveryAttempted per job (each recipient's outcome), or for a job
from an older queue one DeliverySucceeded / DeliveryDeferred / DeliveryFailed per
recipient, and acks the job only after those are acknowledged.

Environment: MAILBUS_DELIVERY_ACK_WAIT (seconds, default 8) sets the shared
consumer's ack_wait; MAILBUS_FAULT=delivery.exit_before_ack is a test-only
fault point (see services.delivery.adapters.worker).
"""
