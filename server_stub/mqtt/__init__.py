"""The MQTT 3.1.1 device endpoint over mutual TLS."""
