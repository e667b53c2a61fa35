"""The reviewer dashboard: the queue, one application, grants, and the audit log as CSV.

Every view is for reviewers only (the Reviewers group's `access.review_application` permission, or a
superuser): anonymous visitors are sent to sign in, everyone else gets a 403. Each state change is one
POST that calls one service; a Conflict from the service (another reviewer was faster, the page was
stale) is shown as a message and changes nothing.
"""
