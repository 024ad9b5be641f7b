"""Loopback fakes of every carrier and provider, for tests: real servers on 127.0.0.1."""
