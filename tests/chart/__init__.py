"""Chart tests: render and validate chart/ with Helm 4 as a library (helpers in chartlib)."""
