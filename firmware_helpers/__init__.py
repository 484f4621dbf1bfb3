"""Issuing device certificates by the platform's rules, and provisioning them onto boards."""
