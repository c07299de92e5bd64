// Swagger UI, served from this service, reading this service's openapi.yaml
// (its ./schemas/*.json references resolve against /schemas/ here).
window.SwaggerUIBundle({
  url: '/openapi.yaml',
  dom_id: '#swagger-ui',
  // The default sends the document to an outside validator for a badge: nothing leaves this service.
  validatorUrl: null,
  deepLinking: true,
  tryItOutEnabled: false,
});
