// ReDoc for /redoc with system fonts; the page's Content-Security-Policy keeps it offline.
(function () {
  "use strict";
  var el = document.getElementById("redoc");
  var specUrl = new URL(el.dataset.specUrl, document.baseURI).href;
  var sans = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif";
  Redoc.init(specUrl, {
    expandResponses: "200",
    hideHostname: true,
    pathInMiddlePanel: true,
    jsonSampleExpandLevel: 2,
    theme: {
      typography: {
        fontFamily: sans,
        headings: { fontFamily: sans },
        code: { fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace" },
      },
    },
  }, el);
})();
