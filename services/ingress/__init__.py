"""ingress: the SMTP (and later POP3) listeners.

Answers: SMTP clients on every `protocol: smtp` listener.
Asks: policy over request/reply (`mailbus.policy.v1.<stage>`) at connect, AUTH, MAIL, RCPT,
DATA; no answer in time means 451/421 4.3.0, never 250.
Publishes: message bodies to the `mailbus-bodies` Object Store, then `MessageReceived`
to MAILBUS_EVENTS; "250" only after JetStream acknowledged both.
"""
