#!/usr/bin/env bash
# Re-vendor Swagger UI and ReDoc from the npm registry (development only; the daemon never
# downloads anything). Usage: bash update.sh [SWAGGER_UI_VERSION] [REDOC_VERSION]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
swagger="${1:-5.35.0}"
redoc="${2:-2.5.4}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "swagger-ui-dist@$swagger" "redoc@$redoc" >/dev/null
mkdir sw rd
tar xzf "swagger-ui-dist-$swagger.tgz" -C sw
tar xzf "redoc-$redoc.tgz" -C rd
rm -rf "$here/swagger-ui" "$here/redoc"
mkdir -p "$here/swagger-ui" "$here/redoc"
cp sw/package/{swagger-ui-bundle.js,swagger-ui-bundle.js.LICENSE.txt,swagger-ui.css,LICENSE,NOTICE} "$here/swagger-ui/"
cp rd/package/LICENSE rd/package/bundles/{redoc.standalone.js,redoc.standalone.js.LICENSE.txt} "$here/redoc/"
# The only change to upstream files: ReDoc 2's sidebar footer shows a logo from its CDN and
# has no option to turn it off. Point it at an empty data: URL (its onError hides the image),
# so the page makes no external request at all (the CSP would block it anyway).
sed -i 's#"https://cdn.redoc.ly/redoc/logo-mini.svg"#"data:,"#' "$here/redoc/redoc.standalone.js"
! grep -q 'cdn.redoc.ly' "$here/redoc/redoc.standalone.js"
# Source maps are not shipped; drop the comment so browser dev tools do not ask for them.
sed -i '/^\/\/# sourceMappingURL=/d' "$here/redoc/redoc.standalone.js" "$here/swagger-ui/swagger-ui-bundle.js"
sed -i 's#/\*\# sourceMappingURL=[^*]*\*/##' "$here/swagger-ui/swagger-ui.css"
sha256sum "swagger-ui-dist-$swagger.tgz" "redoc-$redoc.tgz"
