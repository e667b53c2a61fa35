from __future__ import annotations

from django.urls import path

from access.views import applicant as views

urlpatterns = [
    path("access/", views.my_applications, name="my-applications"),
    path("applications/<int:application_id>/", views.application_detail, name="application-detail"),
    path("applications/<int:application_id>/answer/", views.application_answer, name="application-answer"),
    path("applications/<int:application_id>/withdraw/", views.application_withdraw, name="application-withdraw"),
    path("grants/<int:grant_id>/renew/", views.grant_renew, name="grant-renew"),
    path("notifications/", views.notifications, name="notifications"),
]
