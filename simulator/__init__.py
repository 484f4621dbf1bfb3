"""Locust fleet simulation of certificate-authenticated devices."""
