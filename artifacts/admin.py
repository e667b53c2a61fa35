"""Read-mostly admin: rows change through the import command and the services, not by hand."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from artifacts.models import Checkpoint, CheckpointFile, DownloadEvent, ReshardJob, VerificationJob


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields if f.name not in self.editable]

    editable: tuple[str, ...] = ()


class CheckpointFileInline(admin.TabularInline):
    model = CheckpointFile
    extra = 0
    can_delete = False
    fields = ("path", "size", "sha256", "md5", "verified_at", "error")
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("release", "variant", "format", "tp_size", "dtype", "state", "verified_at")
    list_filter = ("state", "format", "release")
    search_fields = ("variant", "release__slug", "label")
    editable = ("label", "description")
    inlines = [CheckpointFileInline]


@admin.register(CheckpointFile)
class CheckpointFileAdmin(ReadOnlyAdmin):
    list_display = ("checkpoint", "path", "size", "verified_at", "error")
    search_fields = ("path", "sha256", "md5")


@admin.register(VerificationJob)
class VerificationJobAdmin(ReadOnlyAdmin):
    list_display = ("pk", "checkpoint", "status", "files_done", "files_total", "bytes_hashed", "heartbeat_at")
    list_filter = ("status",)


@admin.register(ReshardJob)
class ReshardJobAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "source",
        "target_format",
        "tp_size",
        "dtype",
        "status",
        "phase",
        "bytes_done",
        "bytes_total",
        "attempts",
        "heartbeat_at",
        "output",
    )
    list_filter = ("status", "target_format")
    search_fields = ("job_key", "source__variant", "source__release__slug")


@admin.register(DownloadEvent)
class DownloadEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user", "file", "grant", "status_code", "bytes_served", "via", "ip_address")
    list_filter = ("via", "status_code")
    search_fields = ("user__email", "file__path")
