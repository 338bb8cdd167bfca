"""ingress: the SMTP and POP3 listeners.

Answers: SMTP clients on every `protocol: smtp` listener, POP3 clients on every
`protocol: pop3` one.
Asks: policy over request/reply (`mailbus.policy.v1.<stage>`) at connect, AUTH, MAIL, RCPT,
DATA; no answer in time means 451/421 4.3.0, never 250. POP3 asks it at connect and
at each login.
Publishes: message bodies to the `MAILBUS_BODIES` stream, then `MessageReceived`
to MAILBUS_EVENTS; "250" only after JetStream acknowledged both. A POP3 login's
`Pop3LoginSucceeded` goes to MAILBUS_ACCESS before its +OK.
"""
