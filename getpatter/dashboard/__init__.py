"""The local dashboard: routes and one static page."""
