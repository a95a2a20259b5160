from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.urls import include, path

# Sign in and out, and password change; the password-reset pages only where
# a reset mail can reach the user (settings.PASSWORD_RESET_ENABLED).
account_urls = [
    pattern
    for pattern in auth_urls.urlpatterns
    if settings.PASSWORD_RESET_ENABLED or not pattern.name.startswith("password_reset")
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(account_urls)),
    path("", include("provisioning.urls")),
    path("", include("tenants.urls")),
]
