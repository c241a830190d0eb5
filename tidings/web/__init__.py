"""The web edge: provider webhooks, tracking, unsubscribe and the event API (docs/web.md)."""
