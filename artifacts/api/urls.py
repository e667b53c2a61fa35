"""/api/v1/checkpoints/… (the access app's API routes live in access/api/urls.py)."""

from __future__ import annotations

from django.urls import path

from artifacts.api import views

app_name = "artifacts-api"

urlpatterns = [
    path("checkpoints/", views.CheckpointList.as_view(), name="checkpoints"),
    path("checkpoints/<int:checkpoint_id>/", views.CheckpointDetail.as_view(), name="checkpoint"),
    path("checkpoints/<int:checkpoint_id>/links/", views.CheckpointLinks.as_view(), name="checkpoint-links"),
    path("checkpoints/<int:checkpoint_id>/bundle/manifest/", views.BundleManifest.as_view(), name="bundle-manifest"),
    path(
        "checkpoints/<int:checkpoint_id>/bundle/sha256sums/", views.BundleSha256Sums.as_view(), name="bundle-sha256sums"
    ),
    path("checkpoints/<int:checkpoint_id>/bundle/md5sums/", views.BundleMd5Sums.as_view(), name="bundle-md5sums"),
    path("checkpoints/<int:checkpoint_id>/bundle/download-sh/", views.BundleScript.as_view(), name="bundle-script"),
    # Operators and reviewers
    path(
        "checkpoints/<int:checkpoint_id>/reshard-jobs/",
        views.CheckpointReshardJobs.as_view(),
        name="checkpoint-reshard-jobs",
    ),
    path("reshard-jobs/<int:job_id>/", views.ReshardJobDetail.as_view(), name="reshard-job"),
    path("reshard-jobs/<int:job_id>/cancel/", views.ReshardJobCancel.as_view(), name="reshard-job-cancel"),
]
