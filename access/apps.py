from __future__ import annotations

from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "access"
    verbose_name = "Access: catalog, applications and grants"
    default_auto_field = "django.db.models.BigAutoField"
