"""Tenant traffic: requests for `<slug>-<org>.<BASE_DOMAIN>` reach the tenant's replicas.

- ``routing``: which tenant a Host names, and where its traffic goes (cached).
- ``proxy``: the ASGI app in front of Django that forwards to the replicas.
- ``verify``: mark_active's check that the tenant's URL serves its page.
- ``export``: the route table as an nginx file for a production edge.
"""
