"""``{% drift_summary as drift %}``: the stored reconcile findings, for the drift banner.

The banner loads its own data so that the list page and the live push render
it from one partial without either caller building its context.
"""

from django import template

register = template.Library()


@register.simple_tag
def drift_summary() -> dict:
    from provisioning.reconcile import banner_context

    return banner_context()["drift"]
