"""Turning a Redemption into an HTTP response: local streaming with Range, X-Accel-Redirect, S3 redirect.

Local files go out through FileResponse over a file limited to the requested range. Under gunicorn
the WSGI file wrapper uses sendfile(2) (offset = the file position, count = Content-Length), so the
bytes never pass through Python; elsewhere they stream in bounded blocks. Either way the number of
bytes that left is observed (read() calls, or the final seek socket.sendfile makes) and the download
event is settled to it when the response closes, so an interrupted transfer only counts what it sent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render

from artifacts.services.downloads import DownloadRefused, Redemption, download_settle


class RangeFile:
    """Bytes [start, end] of a file, with the parts of the file API that FileResponse and
    socket.sendfile use. No tell() and not "seekable": FileResponse must not measure it; we set
    Content-Length to the range length ourselves."""

    def __init__(self, path: Path, start: int, end: int, event_id: int) -> None:
        self._handle = open(path, "rb")  # noqa: SIM115 (closed in close())
        self._start, self._end = start, end
        self._handle.seek(start)
        self._position = start
        self._high_water = start
        self._event_id = event_id
        self._observed = False
        self._closed = False

    def fileno(self) -> int:
        return self._handle.fileno()

    def seekable(self) -> bool:
        # False, or FileResponse.set_headers reads the whole file to measure it.
        return False

    def read(self, size: int = -1) -> bytes:
        self._observed = True
        remaining = self._end + 1 - self._position
        if remaining <= 0:
            return b""
        size = remaining if size is None or size < 0 else min(size, remaining)
        data = self._handle.read(size)
        self._position += len(data)
        self._high_water = max(self._high_water, self._position)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # socket.sendfile() seeks to offset + bytes sent when it stops, finished or not.
        self._observed = True
        self._position = self._handle.seek(offset, whence)
        self._high_water = max(self._high_water, min(self._position, self._end + 1))
        return self._position

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._handle.close()
        if self._observed:
            download_settle(event_id=self._event_id, bytes_sent=self._high_water - self._start)


class _FileResponse(FileResponse):
    block_size = 1024 * 1024


def _common_headers(response: HttpResponseBase, redemption: Redemption) -> None:
    response["ETag"] = redemption.etag
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-transform"
    response["X-Content-Type-Options"] = "nosniff"


def _disposition(name: str) -> str:
    return f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(name)}"


def download_response(redemption: Redemption, *, head: bool = False) -> HttpResponseBase:
    row = redemption.file
    response: HttpResponseBase
    if redemption.not_modified:
        response = HttpResponse(status=304)
        _common_headers(response, redemption)
        return response
    if redemption.via == "s3-redirect" and not head:
        # HEAD is answered here: a presigned GET URL would serve the whole object while counting nothing.
        assert redemption.redirect_url
        response = HttpResponseRedirect(redemption.redirect_url)
        response["Cache-Control"] = "no-store"
        return response
    byte_range = redemption.byte_range
    start, end = (byte_range.start, byte_range.end) if byte_range else (0, row.size - 1)
    length = end - start + 1 if row.size else 0
    if redemption.via == "x-accel" or head:
        response = HttpResponse(status=206 if byte_range and head else 200, content_type="application/octet-stream")
        if redemption.via == "x-accel" and not head:
            # nginx serves the file itself, Range included, from its `internal` location.
            response["X-Accel-Redirect"] = settings.ARTIFACTS_X_ACCEL_PREFIX.rstrip("/") + "/" + quote(row.storage_key)
            response["X-Accel-Buffering"] = "no"
        else:
            response["Content-Length"] = str(length)
            if byte_range:
                response["Content-Range"] = f"bytes {start}-{end}/{row.size}"
        response["Content-Disposition"] = _disposition(row.name)
        _common_headers(response, redemption)
        return response
    assert redemption.local_path is not None
    stream: Any = (
        RangeFile(redemption.local_path, start, end, redemption.event.pk)
        if row.size
        else open(redemption.local_path, "rb")
    )
    response = _FileResponse(
        stream,
        status=206 if byte_range else 200,
        content_type="application/octet-stream",
        as_attachment=True,
        filename=row.name,
    )
    response["Content-Length"] = str(length)
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{row.size}"
    _common_headers(response, redemption)
    return response


def wants_json(request: Any) -> bool:
    return request.GET.get("format") == "json" or "application/json" in request.META.get("HTTP_ACCEPT", "")


def refusal_response(request: Any, refusal: DownloadRefused) -> HttpResponse:
    renewal = request.build_absolute_uri(refusal.renewal_url) if refusal.renewal_url else None
    if wants_json(request):
        body: dict[str, Any] = {"code": refusal.code, "detail": refusal.message}
        if renewal:
            body["renewal_url"] = renewal
        response: HttpResponse = JsonResponse(body, status=refusal.status)
    else:
        response = render(
            request, "artifacts/refused.html", {"refusal": refusal, "renewal_url": renewal}, status=refusal.status
        )
    if refusal.status == 416 and refusal.size is not None:
        response["Content-Range"] = f"bytes */{refusal.size}"
    if renewal:
        response["Link"] = f'<{renewal}>; rel="renewal"'
    response["Cache-Control"] = "no-store"
    return response
