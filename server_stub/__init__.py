"""The bundled reference server: registry, HTTP API and MQTT-over-mTLS device endpoint."""
