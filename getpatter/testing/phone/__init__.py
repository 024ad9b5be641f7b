"""What every fake phone network shares: caller audio (G.711 μ-law, WAV, who answers), the
far end's view of a call, the media socket's paced audio and its playout of the app's audio
(marks, clears), and the loopback plumbing (routes, proxy headers, delivering webhooks).

Each carrier's fake (`testing/twilio/`, `testing/telnyx/`, `testing/plivo/`) adds its own wire
words on top: this package knows no carrier's message or field names.
"""
