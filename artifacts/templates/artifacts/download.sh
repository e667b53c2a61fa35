{% autoescape off %}#!/usr/bin/env bash
# Downloads {{ label }} for {{ user }}.
# Generated {{ issued }}; the links expire {{ expires }}.
# Usage: bash download.sh [TARGET_DIR]   (PARALLEL=4 by default; re-run to resume)
# Needs bash, curl and sha256sum. Each file resumes where it stopped (curl -C -) and is retried;
# at the end every file is checked with `sha256sum -c SHA256SUMS`. Progress: a line per file as it
# starts and ends ("[n/N] path (size)"); with PARALLEL=1 on a terminal, also curl's progress bar.
set -uo pipefail
RENEWAL_URL={{ renewal }}
TARGET="${1:-{{ target }}}"
PARALLEL="${PARALLEL:-4}"
export FILE_COUNT={{ file_count }}
# One transfer at a time on a terminal: curl's own bar reads well; several at once would garble it.
if [ "$PARALLEL" = 1 ] && [ -t 2 ]; then export CURL_PROGRESS=--progress-bar; else export CURL_PROGRESS=--silent; fi
mkdir -p "$TARGET" && cd "$TARGET" || exit 1
rm -f .links-expired .links-refused

cat > SHA256SUMS <<'OPENRELEASE_SUMS'
{{ sums }}OPENRELEASE_SUMS

fetch() {
  local number="$1" size="$2" shown="$3" path="$4" url="$5" code attempt have
  local label="[$number/$FILE_COUNT] $path ($shown)"
  mkdir -p "$(dirname "$path")"
  for attempt in 1 2 3 4 5; do
    have=$(stat -c %s "$path" 2>/dev/null || echo 0)
    if [ "$have" = "$size" ]; then
      if [ "$attempt" = 1 ]; then echo "$label: already here"; else echo "$label: done"; fi
      return 0
    fi
    if [ "$have" -gt 0 ]; then echo "$label: resuming at byte $have"; else echo "$label: downloading"; fi
    code=$(curl "$CURL_PROGRESS" --show-error --fail --location --continue-at - --retry 3 --retry-delay 2 \
           --connect-timeout 30 --output "$path" --write-out '%{http_code}' "$url")
    case "$code" in
      200|206) ;;
      410) echo "$path: the download link expired." >&2; touch .links-expired; return 1 ;;
      403|404|429) echo "$path: refused (HTTP $code)." >&2; touch .links-refused; return 1 ;;
      416) rm -f "$path" ;;  # the partial file is longer than the file: start again
      *) echo "$path: HTTP $code, retrying ($attempt/5)" >&2; sleep "$attempt" ;;
    esac
  done
  have=$(stat -c %s "$path" 2>/dev/null || echo 0)
  if [ "$have" = "$size" ]; then echo "$label: done"; return 0; fi
  echo "$label: gave up after 5 attempts with $have of $size bytes." >&2
  return 1
}
export -f fetch

echo "Downloading $FILE_COUNT files ({{ total_size }}) into $PWD, $PARALLEL at a time."
xargs -P "$PARALLEL" -L 1 bash -c 'fetch "$@"' _ <<'OPENRELEASE_FILES'
{{ files }}OPENRELEASE_FILES
status=$?

if [ -e .links-expired ]; then
  echo "Your download links expired. Get fresh ones (one click) at:" >&2
  echo "  $RENEWAL_URL" >&2
  echo "then run the new download.sh in the same directory: finished files are kept and partial ones resume." >&2
  exit 10
fi
if [ -e .links-refused ] || [ "$status" -ne 0 ]; then
  echo "Some files could not be downloaded (see above). Your access may have changed: $RENEWAL_URL" >&2
  exit 11
fi
sha256sum -c SHA256SUMS || { echo "Checksum mismatch: delete the failed files and run again." >&2; exit 12; }
echo "All files downloaded and verified in $PWD."
{% endautoescape %}