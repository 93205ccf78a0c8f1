#!/usr/bin/env bash
# Render a run's report.html in headless Chromium and save a screenshot (a person's first view of the page).
#
#   bash scripts/render_report.sh OUT_DIR [PNG]        # PNG defaults to OUT_DIR/report.png
#
# Installs Debian's chromium package when no chromium is on PATH (apt-get; needs root). The page is opened from
# file:// with networking, QUIC, sync and component updates off: report.html is self-contained, so a page that
# needed the network would show broken images in the screenshot rather than fetch anything.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT_DIR [PNG]" >&2
  exit 2
fi
OUT_DIR=$(cd "$1" && pwd)
HTML="$OUT_DIR/report.html"
PNG=${2:-$OUT_DIR/report.png}
if [ ! -f "$HTML" ]; then
  echo "error: $HTML does not exist (write it with arcttt_kaggle.run.report_html.write_report_html)" >&2
  exit 1
fi
case "$PNG" in /*) ;; *) PNG="$PWD/$PNG" ;; esac

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  echo "chromium not found: installing Debian's chromium package" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  CHROMIUM=$(command -v chromium)
fi

PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
rm -f "$PNG"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$PROFILE" --hide-scrollbars \
  --screenshot="$PNG" --window-size=1280,2000 "file://$HTML" 2>"$PROFILE/chromium.log" || {
    cat "$PROFILE/chromium.log" >&2
    exit 1
  }
if [ ! -s "$PNG" ]; then
  echo "error: chromium wrote no screenshot; its log:" >&2
  cat "$PROFILE/chromium.log" >&2
  exit 1
fi
echo "$PNG"
