"""Provider plugins, one folder each, registered through the `getpatter.plugins` entry points."""
