"""Admin classes the apps share."""

from django.contrib import admin


class ReadOnlyMixin:
    """View only: the rows change through actions and the engine, never by hand.

    For model admins and inlines alike (an inline's add permission takes ``obj``).
    """

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """A model admin for browsing only."""
