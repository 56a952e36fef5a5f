// Swagger UI for /docs: the spec comes from this daemon, nothing from elsewhere (no validator badge).
(function () {
  "use strict";
  var el = document.getElementById("swagger-ui");
  var specUrl = new URL(el.dataset.specUrl, document.baseURI).href;
  var ui = SwaggerUIBundle({
    url: specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    displayRequestDuration: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    onComplete: function () {
      // Reuse the API key saved by the dashboard, if any.
      var key = null;
      try { key = window.localStorage.getItem("themis.apiKey"); } catch (e) { /* storage disabled */ }
      if (key) { ui.preauthorizeApiKey("ApiKeyHeader", key); }
    },
  });
  window.ui = ui;
})();
