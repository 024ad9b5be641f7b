"""Everything that is not a carrier, a provider or the dashboard."""
