"""notifier: RFC 3464 delivery reports (failure, delay, expiry, success) in the sender's language.

Consumes RecipientsFailed, MessageDelayed, MessageExpired and RecipientsDelivered
from MAILBUS_EVENTS (durable consumer "notifier"). For each it reads the
message's MessageReceived and body, decides whether a report is due (null
sender, NOTIFY, reports of reports), submits the report as a new message with
a null sender through the normal queue (body into the bodies stream, then
MessageReceived with `report_of`), and publishes ReportSent into the original
message's events before acking. Answers no requests.
"""
