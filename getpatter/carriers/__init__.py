"""Carrier adapters: each maps one carrier's wire messages to and from audio frames and events."""
