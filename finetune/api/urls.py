"""/api/v1/training-jobs/… and /api/v1/training-datasets/…"""

from __future__ import annotations

from django.urls import path

from finetune.api import views

app_name = "finetune-api"

urlpatterns = [
    path("training-jobs/", views.TrainingJobList.as_view(), name="training-jobs"),
    path("training-jobs/<int:job_id>/", views.TrainingJobDetail.as_view(), name="training-job"),
    path("training-jobs/<int:job_id>/cancel/", views.TrainingJobCancel.as_view(), name="training-job-cancel"),
    path("training-jobs/<int:job_id>/logbook/", views.TrainingJobLogbook.as_view(), name="training-job-logbook"),
    path("training-datasets/", views.DatasetList.as_view(), name="training-datasets"),
    path("training-datasets/<int:dataset_id>/", views.DatasetDetail.as_view(), name="training-dataset"),
]
