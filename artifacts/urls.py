"""Pages of the artifacts app (URL names are the contract with the other pages)."""

from __future__ import annotations

from django.urls import path

from artifacts import views

urlpatterns = [
    # The signed link itself: a bearer token, no session needed (curl, download.sh).
    path("d/<str:token>", views.download_file, name="download-file"),
    # Users
    path("downloads/", views.my_downloads, name="downloads"),
    path("downloads/<int:checkpoint_id>/", views.checkpoint_download, name="downloads-checkpoint"),
    path("downloads/<int:checkpoint_id>/renew/", views.checkpoint_renew, name="downloads-renew"),
    path("downloads/<int:checkpoint_id>/SHA256SUMS", views.bundle_sha256sums, name="downloads-sha256sums"),
    path("downloads/<int:checkpoint_id>/MD5SUMS", views.bundle_md5sums, name="downloads-md5sums"),
    path("downloads/<int:checkpoint_id>/manifest.json", views.bundle_manifest, name="downloads-manifest"),
    path("downloads/<int:checkpoint_id>/download.sh", views.bundle_script, name="downloads-script"),
    # Operators and reviewers
    path("checkpoints/", views.checkpoint_index, name="checkpoint-index"),
    path("checkpoints/downloads/", views.grant_downloads_index, name="grant-downloads"),
    path("checkpoints/downloads/grants/<int:grant_id>/", views.grant_downloads_detail, name="grant-downloads-detail"),
    path("checkpoints/<int:checkpoint_id>/", views.checkpoint_detail, name="checkpoint-detail"),
    path("checkpoints/<int:checkpoint_id>/progress.json", views.checkpoint_progress, name="checkpoint-progress"),
    path("checkpoints/<int:checkpoint_id>/verify/", views.checkpoint_verify, name="checkpoint-verify"),
    path("checkpoints/<int:checkpoint_id>/reshard/", views.checkpoint_reshard, name="checkpoint-reshard"),
    path("checkpoints/reshard-jobs/<int:job_id>/cancel/", views.reshard_job_cancel, name="reshard-job-cancel"),
    path(
        "checkpoints/<int:checkpoint_id>/reshard-jobs.json",
        views.checkpoint_reshard_jobs,
        name="checkpoint-reshard-jobs",
    ),
]
