"""Pages of the fine-tuning app (URL names are the contract with the other pages and the tests)."""

from __future__ import annotations

from django.urls import path

from finetune import views

urlpatterns = [
    # Users: their own jobs and datasets
    path("finetune/", views.job_list, name="finetune-jobs"),
    path("finetune/new/", views.job_submit, name="finetune-submit"),
    path("finetune/datasets/new/", views.dataset_upload, name="finetune-dataset-upload"),
    path("finetune/datasets/<int:dataset_id>/", views.dataset_detail, name="finetune-dataset"),
    path("finetune/jobs/<int:job_id>/", views.job_detail, name="finetune-job"),
    path("finetune/jobs/<int:job_id>/cancel/", views.job_cancel, name="finetune-job-cancel"),
    # Operators and reviewers: every job
    path("finetune/operator/", views.operator_jobs, name="finetune-operator-jobs"),
    path("finetune/operator/jobs/<int:job_id>/", views.operator_job, name="finetune-operator-job"),
    path("finetune/operator/jobs/<int:job_id>/pause/", views.operator_pause, name="finetune-operator-pause"),
    path("finetune/operator/jobs/<int:job_id>/resume/", views.operator_resume, name="finetune-operator-resume"),
    path("finetune/operator/jobs/<int:job_id>/cancel/", views.operator_cancel, name="finetune-operator-cancel"),
]
