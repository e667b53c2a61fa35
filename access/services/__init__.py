"""Writes of the access app, one module per subdomain.

Views, API views, tasks and commands validate their input and call exactly one function here:
`audit` (RequestMeta, the audit log), `accounts`, `api_keys`, `licenses`, `applications` (the
applicant's side), `reviews` (the reviewer's side), `grants` and `notifications`; `workflow` holds
the state machine both sides of an application go through.
"""
