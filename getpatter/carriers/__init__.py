"""Carriers, one folder each (wire formats, REST client, adapter), each registered through the
`getpatter.plugins` entry points exactly like a provider; they implement `core/carrier.py`."""
